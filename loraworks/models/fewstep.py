"""Which few-step family a LoRA belongs to (LCM, TCD, SDXL-Lightning, Hyper-SD, PCM) and the
step count it was distilled for: each family needs its own scheduler, spacing, eta, steps and
CFG (the presets in `config.toml`), so telling them apart is what makes them usable.

Precedence: the file's metadata, then its name (publishers name their files after the family
and the step count: `sdxl_lightning_4step_lora`, `Hyper-SD15-8steps-lora`, `TCD-SD15-LoRA`,
`pcm_sdxl_smallcfg_4step`), then the layout of LCM distillation files — so an LCM-shaped file
named `Hyper-SD15-8steps-lora` is Hyper-SD.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal, get_args

FewStep = Literal["lcm", "tcd", "lightning", "hyper", "pcm", "none"]
FEWSTEP_FAMILIES: tuple[str, ...] = get_args(FewStep)
#: the families with a preset in `config.toml` (a request's `preset`)
PresetName = Literal["lcm", "tcd", "lightning", "hyper", "pcm"]

# Most specific first: a Hyper-SD or PCM text may also mention "consistency".
_FAMILY_WORDS: tuple[tuple[FewStep, re.Pattern[str]], ...] = tuple(
    (family, re.compile(rf"(?<![a-z]){words}(?![a-z])", re.IGNORECASE))
    for family, words in (
        ("hyper", r"(hyper ?sd|hyper ?sdxl)"),
        ("lightning", r"lightning"),
        ("pcm", r"(pcm|phased consistency)"),
        ("tcd", r"(tcd|trajectory consistency)"),
        ("lcm", r"(lcm|latent consistency)"),
    )
)
_STEPS = re.compile(r"(?<![0-9a-z])(\d{1,2}) ?steps?(?![a-z])", re.IGNORECASE)
# Metadata keys whose text describes the model (not its training captions).
DESCRIPTIVE_KEYS = (
    "modelspec.title",
    "modelspec.architecture",
    "modelspec.description",
    "modelspec.tags",
    "ss_output_name",
    "ss_training_comment",
    "ss_network_module",
    "lora_adapter_metadata",
)


@dataclass(frozen=True)
class FewStepFacts:
    family: FewStep = "none"
    steps: int | None = None  # the step count the file was distilled for, when it says


def _words(text: str) -> str:
    return re.sub(r"[_\-.]+", " ", text)


def from_text(text: str) -> FewStepFacts | None:
    """The family (and step count) a name or description states, None when it states none."""
    text = _words(text)
    for family, pattern in _FAMILY_WORDS:
        if pattern.search(text):
            return FewStepFacts(family, _steps_in(text))
    return None


def has_lcm_layout(targets: list[str], metadata: Mapping[str, object]) -> bool:
    """Published LCM-LoRAs (and `train_lcm_distill_lora_*`) adapt the whole UNet — attention,
    resnet convolutions and `time_emb_proj` — and no text encoder, and carry no kohya `ss_*`
    training facts; concept LoRAs almost always touch the text encoder or only attention."""
    unet_only = bool(targets) and all(t.startswith("unet.") for t in targets)
    full_unet = (
        any("time_emb_proj" in t for t in targets)
        and any(".resnets." in t for t in targets)
        and any(".attentions." in t for t in targets)
    )
    kohya_trained = any(k.startswith("ss_") for k in metadata)
    return unet_only and full_unet and not kohya_trained


def detect_fewstep(targets: list[str], metadata: Mapping[str, object], name: str) -> FewStepFacts:
    """A LoRA's family: metadata, then the file name, then the LCM layout guess."""
    described = " ".join(str(metadata.get(k, "")) for k in DESCRIPTIVE_KEYS)
    by_metadata = from_text(described) if described.strip() else None
    by_name = from_text(name) or FewStepFacts()
    if by_metadata is not None:
        return FewStepFacts(by_metadata.family, by_metadata.steps or _steps_in(name))
    if by_name.family != "none":
        return by_name
    return FewStepFacts("lcm") if has_lcm_layout(targets, metadata) else FewStepFacts()


def _steps_in(name: str) -> int | None:
    steps = _STEPS.search(_words(name))
    return int(steps.group(1)) if steps else None
