"""Turn a request's unset fields into concrete settings: the few-step preset when a few-step
LoRA (LCM, TCD, Lightning, Hyper-SD, PCM) or model is in play (`generation.fewstep`), the
config's generation defaults otherwise, LoRA default weights, and trigger words. All numbers
come from the config file."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, replace

from loraworks.generation.emphasis import has_emphasis, parse_emphasis
from loraworks.generation.fewstep import FewStep, choose, preset_weight, sampling
from loraworks.generation.render import RenderSettings
from loraworks.generation.request import MAX_SEED, GenerateRequest
from loraworks.generation.windows import has_window, never_active, steps_run
from loraworks.lora import Strength, component_weights, with_components
from loraworks.models import ModelRecord
from loraworks.models.config import Config

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
    fewstep: str  # the family whose preset applied ("none": the generation defaults)
    warnings: list[str]


def _weight(entry: StackEntry, fewstep: FewStep, config: Config) -> Strength:
    """The entry's weight; its open components (`<lora:x:lbw=OUTD>`) and a missing weight
    get the preset's or the record's default."""
    default = _default_weight(entry, fewstep, config)
    return default if entry.weight is None else with_components(entry.weight, default)


def _default_weight(entry: StackEntry, fewstep: FewStep, config: Config) -> Strength:
    preset = preset_weight(entry.record, fewstep)
    if preset is not None:
        return preset
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


def resolve(
    request: GenerateRequest,
    prompt: str,
    main: ModelRecord,
    stack: list[StackEntry],
    config: Config,
) -> Resolved:
    """Concrete settings for `request`; `prompt` is the text with `<lora:>` tags removed."""
    fewstep, warnings = choose(request, main, [e.record for e in stack], config)
    chosen, fights = sampling(request, config, fewstep)
    if request.append_trigger_words:
        prompt = with_trigger_words(prompt, stack)
    settings = RenderSettings(
        prompt=prompt,
        negative_prompt=request.negative_prompt or None,
        width=request.width or config.generation.width,  # 0 here: `with_native_size`
        height=request.height or config.generation.height,
        steps=chosen.steps,
        cfg=chosen.cfg,
        scheduler=chosen.scheduler,
        spacing=chosen.spacing,
        eta=chosen.eta,
        seed=request.seed if request.seed is not None else secrets.randbelow(MAX_SEED + 1),
        init_image=request.init_image,
        strength=request.strength or (DEFAULT_STRENGTH if request.init_image else 1.0),
    )
    loras = [replace(e, weight=_weight(e, fewstep, config)) for e in stack]
    warnings += fights
    warnings += _unguided_negative_warning(settings)
    warnings += _extreme_warnings(settings, loras)
    warnings += _closed_windows(settings, loras)
    return Resolved(settings, loras, fewstep.family, warnings)


def _extreme_warnings(s: RenderSettings, loras: list[StackEntry]) -> list[str]:
    """Weights and emphasis so large that the image will not be worth its time (#16)."""
    out = []
    for entry in loras:
        peak = max(abs(v) for v in component_weights(entry.weight or 0.0, "").values())
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


def _closed_windows(s: RenderSettings, loras: list[StackEntry]) -> list[str]:
    """A step window (`start=`/`stop=`) that never opens in this request's steps."""
    total = steps_run(s.steps, s.strength, s.init_image is not None)
    return [
        f"LoRA '{entry.record.name}' is active in none of the {total} steps (start/stop "
        "window); the image is made without it"
        for entry in loras
        if entry.weight is not None
        and has_window(entry.weight)
        and never_active(entry.weight, total)
    ]


def _unguided_negative_warning(s: RenderSettings) -> list[str]:
    """At CFG ≤ 1 there is no unconditional pass, so a negative prompt does nothing — peers
    drop it silently and LCM users wonder why it is ignored."""
    if not s.negative_prompt or s.cfg > 1.0:
        return []
    return [
        f"the negative prompt has no effect at CFG {s.cfg:g} (≤ 1 runs no unconditional pass); "
        "with a few-step LoRA, CFG 1.5–2 makes it count at the cost of a second UNet pass per "
        "step"
    ]
