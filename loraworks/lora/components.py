"""The model side of patching: which modules of a pipeline a LoRA may patch, which base they
are, and how a LoRA's target names find them.

The base comes from the modules' widths (`bases`): the UNet's cross-attention input width
tells SD1/SD2/SDXL apart; without a UNet a second text encoder means SDXL, and a first text
encoder whose width belongs to one base only names it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from .bases import COMPONENTS, TEXT_ENCODER_WIDTHS, base_of_cross_attention
from .errors import LoRAError
from .keys import flatten, text_encoder_candidates


def components_of(pipe: Any) -> dict[str, nn.Module]:
    """The patchable modules of a pipeline or a ``{name: module}`` mapping (a torch.compile'd
    module stands for its original, whose parameters are the ones patched)."""
    if isinstance(pipe, Mapping):
        unknown = set(pipe) - set(COMPONENTS) - {"vae", "tokenizer", "tokenizer_2", "scheduler"}
        if unknown:
            raise LoRAError(
                f"unknown component name(s) {sorted(unknown)}; expected {', '.join(COMPONENTS)}"
            )
        comps = {k: pipe[k] for k in COMPONENTS if pipe.get(k) is not None}
    else:
        comps = {k: getattr(pipe, k) for k in COMPONENTS if getattr(pipe, k, None) is not None}
    for k, m in list(comps.items()):
        m = getattr(m, "_orig_mod", m)
        comps[k] = m
        if not isinstance(m, nn.Module):
            raise LoRAError(f"component {k!r} is a {type(m).__name__}, not a torch module")
    if not comps:
        raise LoRAError("no unet / text_encoder / text_encoder_2 to patch in the given pipeline")
    return comps


def model_base(comps: Mapping[str, nn.Module]) -> str | None:
    """sd1/sd2/sdxl from the modules' widths; None when the components do not tell."""
    unet = comps.get("unet")
    if unet is not None:
        width = getattr(getattr(unet, "config", None), "cross_attention_dim", None)
        if isinstance(width, list | tuple):
            width = width[0] if width else None
        if width is None:
            for name, m in unet.named_modules():
                if name.endswith("attn2.to_k") and isinstance(m, nn.Linear):
                    width = m.in_features
                    break
        found = base_of_cross_attention(width)
        if found:
            return found
    if comps.get("text_encoder_2") is not None:
        return "sdxl"
    te = comps.get("text_encoder")
    if te is not None:
        hidden = getattr(getattr(te, "config", None), "hidden_size", None)
        bases = TEXT_ENCODER_WIDTHS.get(hidden, frozenset())
        if len(bases) == 1:
            return next(iter(bases))
    return None


_AMBIGUOUS = object()


class ModuleIndex:
    """Dotted and flattened lookup of one component's modules (built once per patcher): a
    target resolves by its exact path, else by its flattened name when that is unique."""

    def __init__(self, root: nn.Module):
        self.modules: dict[str, nn.Module] = dict(root.named_modules())
        self.flat: dict[str, Any] = {}
        for name in self.modules:
            f = flatten(name)
            self.flat[f] = _AMBIGUOUS if f in self.flat else name

    def resolve(self, comp: str, path: str) -> str | None:
        cands = text_encoder_candidates(path) if comp.startswith("text_encoder") else [path]
        for c in cands:
            if c in self.modules:
                return c
        for c in cands:
            hit = self.flat.get(flatten(c))
            if isinstance(hit, str):
                return hit
        return None
