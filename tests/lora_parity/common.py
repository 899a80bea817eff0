"""What every producer shares: the result type, the pristine tiny models, how a weight
splits over components, and kohya key naming (SD1/SD2 diffusers names, SDXL sgm names)."""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import torch
from safetensors.torch import save_file

from tests.fixtures.models import Components, build_components
from tests.lora_parity.inputs import Outputs
from tests.lora_parity.sgm import sdxl_sgm_name

SEED = 0
WEIGHTS = (0.5, 1.0, -1.0)
Weight = float | Mapping[str, float]


@dataclass
class Produced:
    """A LoRA as its producer wrote it, and the producer's own forward at a weight."""

    kind: str
    base: str
    source: Path
    reference: Callable[[Weight], Outputs]
    weights: tuple[float, ...] = WEIGHTS
    targets: tuple[str, ...] = ("unet", "text_encoder")
    notes: dict = field(default_factory=dict)


@cache
def _pristine(base: str) -> Components:
    return build_components(base, "tiny", SEED)


def fresh(base: str) -> Components:
    """The unpatched model every engine run and every producer starts from (a copy: building
    and initialising a model costs far more than copying one)."""
    return copy.deepcopy(_pristine(base))


def component_weight(weight: Weight, component: str) -> float:
    """A float applies to every component; a dict names components, the rest get 0."""
    if isinstance(weight, Mapping):
        return float(weight.get(component, 0.0))
    return float(weight)


class _TextModelRoot(torch.nn.Module):
    """Puts a `text_model.` level above a CLIPTextModel that lacks it (transformers ≥5.16),
    so module paths read like the ones in real kohya/LyCORIS files."""

    def __init__(self, text_model: torch.nn.Module):
        super().__init__()
        self.text_model = text_model


def kohya_root(te: torch.nn.Module) -> torch.nn.Module:
    return te if hasattr(te, "text_model") else _TextModelRoot(te)


KOHYA_TE_PREFIX = {"text_encoder": "lora_te", "text_encoder_2": "lora_te2"}
KOHYA_SDXL_TE_PREFIX = {"text_encoder": "lora_te1", "text_encoder_2": "lora_te2"}


def kohya_prefixes(base: str) -> dict[str, str]:
    te = KOHYA_SDXL_TE_PREFIX if base == "sdxl" else KOHYA_TE_PREFIX
    return {"unet": "lora_unet", **te}


def kohya_unet_path(base: str, diffusers_path: str) -> str:
    """The UNet module path a kohya file names: diffusers names for SD1/SD2, sgm for SDXL."""
    return sdxl_sgm_name(diffusers_path) if base == "sdxl" else diffusers_path


def kohya_name(base: str, component: str, path: str) -> str:
    """Flattened kohya layer name for a module path relative to the kohya root."""
    return f"{kohya_prefixes(base)[component]}_{path.replace('.', '_')}"


def save_safetensors(path: Path, sd: Mapping[str, torch.Tensor], metadata: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous() for k, v in sd.items()}, str(path), metadata)
    return path
