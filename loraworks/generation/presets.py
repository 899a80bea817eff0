"""Turn a request's unset fields into concrete settings: the LCM preset when an LCM-LoRA (or
an LCM main model) is in play, the config's generation defaults otherwise, LoRA default
weights, and trigger words. All numbers come from the config file."""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from dataclasses import dataclass, replace

from loraworks.generation.emphasis import has_emphasis, parse_emphasis
from loraworks.generation.render import RenderSettings
from loraworks.generation.request import MAX_SEED, GenerateRequest
from loraworks.lora import Strength
from loraworks.models import ModelRecord
from loraworks.models.config import Config

# Beyond these an LCM-LoRA is being misused: slow, and the images over-cook.
LCM_MAX_STEPS = 8
LCM_MAX_CFG = 2.0
DEFAULT_STRENGTH = 0.75  # img2img: how much of the init image is re-noised
# Beyond these a LoRA weight or a prompt's emphasis breaks the image (noise, or all black
# when it overflows): usual weights lie within ±2, slider LoRAs within ±8; A1111's emphasis
# stays under ×2. A warning, not a refusal: experiments are the user's to make.
EXTREME_WEIGHT = 10.0
EXTREME_EMPHASIS = 4.0


@dataclass(frozen=True)
class StackEntry:
    """One LoRA to apply: its record and its weight, as the request gave it (checked there) —
    None until `resolve` fills in the preset's or the record's default."""

    record: ModelRecord
    weight: Strength | None


@dataclass
class Resolved:
    settings: RenderSettings  # seed is the first image's
    loras: list[StackEntry]  # every weight filled
    lcm: bool
    warnings: list[str]


def _lcm_mode(request: GenerateRequest, main: ModelRecord, stack: list[StackEntry]) -> bool:
    """LCM defaults fill whatever the request leaves unset; set fields are kept (and warned
    about when they do not suit LCM)."""
    return (
        request.preset == "lcm"
        or main.fewstep == "lcm"
        or any(e.record.fewstep == "lcm" for e in stack)
    )


def _weight(entry: StackEntry, lcm: bool, config: Config) -> Strength:
    if entry.weight is not None:
        return entry.weight
    if lcm:
        preset = config.lcm
        return preset.lcm_lora_weight if entry.record.fewstep == "lcm" else preset.other_lora_weight
    if entry.record.default_weight is not None:
        return entry.record.default_weight
    return config.generation.lora_weight


def with_trigger_words(prompt: str, stack: list[StackEntry]) -> str:
    """`prompt` plus each LoRA trigger word it does not already contain."""
    present = prompt.casefold()
    missing: list[str] = []
    for entry in stack:
        for word in entry.record.trigger_words:
            if word.strip() and word.casefold() not in present:
                missing.append(word.strip())
                present += " " + word.casefold()
    return ", ".join(part for part in [prompt, *missing] if part)


def _lcm_warnings(
    main: ModelRecord, stack: list[StackEntry], s: RenderSettings, preset_asked: bool
) -> list[str]:
    lcm_loras = [e.record.name for e in stack if e.record.fewstep == "lcm"]
    if preset_asked and not lcm_loras and main.fewstep != "lcm":
        return [
            "preset 'lcm' without an LCM-LoRA: unless the main model is LCM-distilled, "
            "4 steps at CFG 1 give a blurry image; add an LCM-LoRA for this base"
        ]
    if not lcm_loras:
        return []
    off = []
    if s.scheduler != "lcm":
        off.append(f"scheduler {s.scheduler}")
    if s.steps > LCM_MAX_STEPS:
        off.append(f"{s.steps} steps")
    if s.cfg > LCM_MAX_CFG:
        off.append(f"CFG {s.cfg:g}")
    if not off:
        return []
    return [
        f"LCM-LoRA {', '.join(lcm_loras)} is meant for the LCM scheduler, 4-{LCM_MAX_STEPS} steps "
        f"and CFG 1-{LCM_MAX_CFG:g}; this request uses {', '.join(off)} (slower, and images "
        "tend to over-saturate). Leave scheduler/steps/CFG unset to get the LCM preset."
    ]


def resolve(
    request: GenerateRequest,
    prompt: str,
    main: ModelRecord,
    stack: list[StackEntry],
    config: Config,
) -> Resolved:
    """Concrete settings for `request`; `prompt` is the text with `<lora:>` tags removed."""
    lcm = _lcm_mode(request, main, stack)
    source = config.lcm if lcm else config.generation
    if request.append_trigger_words:
        prompt = with_trigger_words(prompt, stack)
    settings = RenderSettings(
        prompt=prompt,
        negative_prompt=request.negative_prompt or None,
        width=request.width or config.generation.width,  # 0 here: `with_native_size`
        height=request.height or config.generation.height,
        steps=request.steps if request.steps is not None else source.steps,
        cfg=request.cfg if request.cfg is not None else source.cfg,
        scheduler=request.scheduler or source.scheduler,
        seed=request.seed if request.seed is not None else secrets.randbelow(MAX_SEED + 1),
        init_image=request.init_image,
        strength=request.strength or (DEFAULT_STRENGTH if request.init_image else 1.0),
    )
    loras = [replace(e, weight=_weight(e, lcm, config)) for e in stack]
    warnings = _lcm_warnings(main, stack, settings, request.preset == "lcm")
    warnings += _unguided_negative_warning(settings)
    warnings += _extreme_warnings(settings, loras)
    return Resolved(settings, loras, lcm, warnings)


def _extreme_warnings(s: RenderSettings, loras: list[StackEntry]) -> list[str]:
    """Weights and emphasis so large that the image will not be worth its time (#16)."""
    out = []
    for entry in loras:
        weight = entry.weight
        values = weight.values() if isinstance(weight, Mapping) else [weight or 0.0]
        peak = max(abs(v) for v in values)
        if peak > EXTREME_WEIGHT:
            out.append(
                f"LoRA '{entry.record.name}' weight {peak:g} is far outside the usual range "
                f"(within ±2, sliders ±8): expect noise or a black image"
            )
    for label, text in (("prompt", s.prompt), ("negative prompt", s.negative_prompt)):
        if text and has_emphasis(text):
            peak = max(abs(w) for _, w in parse_emphasis(text))
            if peak > EXTREME_EMPHASIS:
                out.append(
                    f"the {label}'s emphasis reaches ×{peak:.3g} (nested or weighted brackets); "
                    f"beyond ×{EXTREME_EMPHASIS:g} images break down"
                )
    return out


def _unguided_negative_warning(s: RenderSettings) -> list[str]:
    """At CFG ≤ 1 there is no unconditional pass, so a negative prompt does nothing — peers
    drop it silently and LCM users wonder why it is ignored."""
    if not s.negative_prompt or s.cfg > 1.0:
        return []
    return [
        f"the negative prompt has no effect at CFG {s.cfg:g} (≤ 1 runs no unconditional pass); "
        "with an LCM-LoRA, CFG 1.5–2 makes it count at the cost of a second UNet pass per step"
    ]
