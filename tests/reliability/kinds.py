"""Random LoRAs of every layer kind, written by hand in kohya/LyCORIS key layout for the tiny
SD1 model: LoRA, LoCon (3x3 convs), Tucker LoCon (`lora_mid`), LoHa, LoKr (full `w1`,
factorised `w2`), IA3 (output or input axis), full `diff`/`diff_b`, DoRA (`dora_scale`) and
norm `w_norm`/`b_norm`. One LoRA mixes kinds across modules, as LyCORIS files may.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import torch
from torch import nn

from loraworks.lora import LoRA, load_lora
from tests.lora.util import kohya_name, targets

Leaves = dict[str, torch.Tensor]
Writer = Callable[[torch.Tensor, torch.Generator, float], Leaves]
SCALE = 0.05  # small enough that fp16 and bf16 patched weights stay finite


def _randn(*shape: int, g: torch.Generator, s: float) -> torch.Tensor:
    return torch.randn(*shape, generator=g) * s


def lora(w: torch.Tensor, g: torch.Generator, s: float, rank: int = 4) -> Leaves:
    tail = (1,) * (w.dim() - 2)
    return {
        "lora_down.weight": _randn(rank, *w.shape[1:], g=g, s=s),
        "lora_up.weight": _randn(w.shape[0], rank, *tail, g=g, s=s),
        "alpha": torch.tensor(float(rank) / 2),
    }


def tucker(w: torch.Tensor, g: torch.Generator, s: float, rank: int = 3) -> Leaves:
    return {
        "lora_down.weight": _randn(rank, w.shape[1], 1, 1, g=g, s=s),
        "lora_mid.weight": _randn(rank, rank, *w.shape[2:], g=g, s=s),
        "lora_up.weight": _randn(w.shape[0], rank, 1, 1, g=g, s=s),
        "alpha": torch.tensor(2.0),
    }


def loha(w: torch.Tensor, g: torch.Generator, s: float, rank: int = 2) -> Leaves:
    out, inp = w.shape
    return {
        "hada_w1_a": _randn(out, rank, g=g, s=s * 4),
        "hada_w1_b": _randn(rank, inp, g=g, s=s * 4),
        "hada_w2_a": _randn(out, rank, g=g, s=s * 4),
        "hada_w2_b": _randn(rank, inp, g=g, s=s * 4),
        "alpha": torch.tensor(1.0),
    }


def lokr(w: torch.Tensor, g: torch.Generator, s: float, rank: int = 2) -> Leaves:
    out, inp = w.shape
    return {
        "lokr_w1": _randn(4, 4, g=g, s=s * 4),
        "lokr_w2_a": _randn(out // 4, rank, g=g, s=s * 4),
        "lokr_w2_b": _randn(rank, inp // 4, g=g, s=s * 4),
        "alpha": torch.tensor(float(rank)),
    }


def ia3(w: torch.Tensor, g: torch.Generator, s: float) -> Leaves:
    on_input = bool(torch.rand((), generator=g) < 0.5)
    n = w.shape[1] if on_input else w.shape[0]
    return {"weight": _randn(n, g=g, s=s * 4), "on_input": torch.tensor(on_input)}


def full(w: torch.Tensor, g: torch.Generator, s: float) -> Leaves:
    return {"diff": _randn(*w.shape, g=g, s=s * 0.1), "diff_b": _randn(w.shape[0], g=g, s=s)}


def dora(w: torch.Tensor, g: torch.Generator, s: float) -> Leaves:
    norms = w.detach().float().reshape(w.shape[0], -1).norm(dim=1, keepdim=True)
    jitter = 1 + _randn(w.shape[0], 1, g=g, s=s)
    return {**lora(w, g, s), "dora_scale": norms * jitter}


def norm(w: torch.Tensor, g: torch.Generator, s: float) -> Leaves:
    return {"w_norm": _randn(*w.shape, g=g, s=s), "b_norm": _randn(*w.shape, g=g, s=s)}


LINEAR_KINDS: dict[str, Writer] = {
    "lora": lora,
    "loha": loha,
    "lokr": lokr,
    "ia3": ia3,
    "full": full,
    "dora": dora,
}
CONV_KINDS: dict[str, Writer] = {"locon": lora, "tucker": tucker, "full": full}
NORM_KINDS: dict[str, Writer] = {"norm": norm}
KINDS = sorted({*LINEAR_KINDS, *CONV_KINDS, *NORM_KINDS})


def _writers(module: nn.Module) -> dict[str, Writer]:
    if isinstance(module, nn.Linear):
        fits_lokr = module.weight.shape[0] % 4 == 0 and module.weight.shape[1] % 4 == 0
        return {k: v for k, v in LINEAR_KINDS.items() if fits_lokr or k != "lokr"}
    if isinstance(module, nn.Conv2d):
        square = module.weight.shape[-1] == 3
        return {k: v for k, v in CONV_KINDS.items() if square or k != "tucker"}
    return NORM_KINDS


def eligible(components) -> list[tuple[str, str, nn.Module]]:
    """(component, module name as real files write it, module) for every patchable module."""
    kinds = (nn.Linear, nn.Conv2d, nn.GroupNorm, nn.LayerNorm)
    found = targets(components, kinds=kinds, suffixes=())
    return [(comp, name, mod) for comp, name, _, mod in found if mod.weight is not None]


def random_state_dict(components, rng: random.Random, modules: int = 6) -> tuple[Leaves, list[str]]:
    """A kohya/LyCORIS state dict with `modules` random targets, each of a random fitting
    kind; returns it with the kinds used."""
    g = torch.Generator().manual_seed(rng.randrange(2**31))
    sd: Leaves = {}
    used: list[str] = []
    pool = eligible(components)
    taken: set[str] = set()
    while len(used) < modules:
        kind = rng.choice(KINDS)  # kinds first, so the many norms do not crowd out the rest
        comp, name, mod = rng.choice([t for t in pool if kind in _writers(t[2])])
        if name in taken:
            continue
        taken.add(name)
        key = kohya_name(components.base, comp, name)
        weight = mod.weight.detach().float()
        for leaf, tensor in _writers(mod)[kind](weight, g, SCALE).items():
            sd[f"{key}.{leaf}"] = tensor
        used.append(kind)
    return sd, used


def random_lora(components, rng: random.Random, modules: int = 6) -> tuple[LoRA, list[str]]:
    sd, used = random_state_dict(components, rng, modules)
    return load_lora((sd, {}), base=components.base), used
