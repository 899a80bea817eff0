"""A minimal trainable LoRA (down/up added to a Linear or Conv2d) and its kohya-format file.

Small enough to read at a glance, and it writes the exact key layout the published files use,
which is what the engine must load: ``lora_unet_<module path with _>.lora_down.weight``,
``.lora_up.weight`` and ``.alpha``; text-encoder keys keep kohya's ``text_model`` level even
where transformers ≥ 5.16 dropped it from the module paths.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

UNET_ATTENTION = ("to_q", "to_k", "to_v", "to_out.0")
TEXT_ATTENTION = ("q_proj", "k_proj", "v_proj", "out_proj")
UNET_ALL = (
    *UNET_ATTENTION,
    "proj_in",
    "proj_out",
    "ff.net.0.proj",
    "ff.net.2",
    "time_emb_proj",
    "conv1",
    "conv2",
    "conv_shortcut",
    "downsamplers.0.conv",
    "upsamplers.0.conv",
)
"""The UNet layers diffusers' LCM-LoRA example adapts (attention, feed-forward, resnets): a
LoCon. Drawing a shape the base model never drew needs the resnets, not only attention."""


class LoRAModule(nn.Module):
    """`base(x) + up(down(x)) · scale · alpha/rank`; `up` starts at zero so training starts at
    the base model. `scale` is the user-facing weight (0 switches the LoRA off)."""

    def __init__(self, base: nn.Linear | nn.Conv2d, rank: int, alpha: float) -> None:
        super().__init__()
        self.base = base
        self.rank, self.alpha, self.scale = rank, alpha, 1.0
        if isinstance(base, nn.Conv2d):
            self.down = nn.Conv2d(
                base.in_channels, rank, base.kernel_size, base.stride, base.padding, bias=False
            )
            self.up = nn.Conv2d(rank, base.out_channels, 1, bias=False)
        else:
            self.down = nn.Linear(base.in_features, rank, bias=False)
            self.up = nn.Linear(rank, base.out_features, bias=False)
        nn.init.kaiming_uniform_(self.down.weight, a=5**0.5)
        nn.init.zeros_(self.up.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        if self.scale == 0:
            return out
        return out + self.up(self.down(x)) * (self.scale * self.alpha / self.rank)


@dataclass
class LoRASet:
    """The LoRA modules added to one model, keyed by their kohya name."""

    modules: dict[str, LoRAModule]

    def parameters(self) -> list[nn.Parameter]:
        return [p for m in self.modules.values() for p in (m.down.weight, m.up.weight)]

    def set_scale(self, scale: float) -> None:
        for m in self.modules.values():
            m.scale = scale

    def state_dict(self, dtype: torch.dtype = torch.float16) -> dict[str, torch.Tensor]:
        """kohya layout: `<name>.lora_down.weight`, `<name>.lora_up.weight`, `<name>.alpha`."""
        out: dict[str, torch.Tensor] = {}
        for name, m in self.modules.items():
            out[f"{name}.lora_down.weight"] = m.down.weight.detach().to(dtype).contiguous()
            out[f"{name}.lora_up.weight"] = m.up.weight.detach().to(dtype).contiguous()
            out[f"{name}.alpha"] = torch.tensor(float(m.alpha), dtype=dtype)
        return out

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for name, m in self.modules.items():
                m.down.weight.copy_(state[f"{name}.lora_down.weight"])
                m.up.weight.copy_(state[f"{name}.lora_up.weight"])


def kohya_name(prefix: str, module_path: str) -> str:
    """`lora_unet` + `down_blocks.1.attentions.0…to_out.0` -> `lora_unet_down_blocks_1_…_to_out_0`.
    Text encoders get kohya's `text_model` level whether or not transformers has it."""
    if prefix == "lora_te" and not module_path.startswith("text_model."):
        module_path = f"text_model.{module_path}"
    return f"{prefix}_{module_path.replace('.', '_')}"


def inject(
    model: nn.Module,
    prefix: str,
    suffixes: Iterable[str] | None,
    rank: int,
    alpha: float,
    kinds: tuple[type, ...] = (nn.Linear,),
) -> LoRASet:
    """Wrap every module of `kinds` whose path ends in one of `suffixes` (None: all of them)."""
    ends = tuple(f".{s}" for s in suffixes) if suffixes is not None else None
    targets = [
        (path, module)
        for path, module in model.named_modules()
        if isinstance(module, kinds) and (ends is None or path.endswith(ends))
    ]
    modules: dict[str, LoRAModule] = {}
    for path, module in targets:
        parent_path, _, child = path.rpartition(".")
        lora = LoRAModule(module, rank, alpha)
        setattr(model.get_submodule(parent_path), child, lora)
        modules[kohya_name(prefix, path)] = lora
    return LoRASet(modules)


def remove(model: nn.Module) -> None:
    """Put the original modules back (undo `inject`)."""
    for path, module in list(model.named_modules()):
        if isinstance(module, LoRAModule):
            parent_path, _, child = path.rpartition(".")
            setattr(model.get_submodule(parent_path), child, module.base)


def save_lora(path: Path, sets: list[LoRASet], metadata: dict[str, object]) -> Path:
    """One safetensors file; metadata values that are not strings are stored as JSON."""
    state: dict[str, torch.Tensor] = {}
    for s in sets:
        state.update(s.state_dict())
    meta = {k: v if isinstance(v, str) else json.dumps(v) for k, v in metadata.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path), metadata=meta)
    return path
