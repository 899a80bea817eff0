"""What a tool that makes a LoRA returns: the LoRA and, per layer, what it kept."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ..model import LoRA

#: ``progress(done, total, target)`` after each layer
Progress = Callable[[int, int, str], None]
#: the metadata key that says which tool made a file, from what, how
TOOL_KEY = "loraworks_tool"


@dataclass
class LayerReport:
    """One output layer: its new rank, the fraction of ‖ΔW‖_F it keeps and ‖ΔW − ΔW_new‖_F
    (0 for exact outputs); ``rank_before`` is the source's (summed over merged LoRAs) when it
    has one."""

    target: str
    rank: int
    retained: float = 1.0
    error: float = 0.0
    rank_before: int | None = None


@dataclass
class ToolResult:
    lora: LoRA
    layers: list[LayerReport] = field(default_factory=list)
    #: targets left out because their ΔW is zero (or below ``min_diff`` in `extract`)
    dropped: list[str] = field(default_factory=list)


def tool_note(tool: str, **facts: object) -> dict[str, str]:
    return {TOOL_KEY: json.dumps({"tool": tool, **facts}, sort_keys=True)}


def tensor_dtype(layers) -> torch.dtype:
    """The floating dtype of the first tensor of the layers (float32 when there is none)."""
    for layer in layers:
        for t in layer.all_tensors().values():
            if t.is_floating_point():
                return t.dtype
    return torch.float32
