"""LoRA / LoCon (kohya, LyCORIS ``algo=lora|locon``, PEFT ``LoraConfig``, diffusers).

Leaves: ``lora_down.weight`` [r, in(, kh, kw)], ``lora_up.weight`` [out, r(, 1, 1)],
optional ``lora_mid.weight`` [r, r, kh, kw] (LyCORIS Tucker / CP conv), optional ``alpha``,
optional ``lora_up.bias`` (PEFT ``lora_bias=True``).

    ΔW = m · scale · up.flatten(1) @ down.flatten(1)                  (reshaped to W)
    ΔW = m · scale · einsum("m n k l, i m, n j -> i j k l", mid, up, down)   (Tucker)
    Δb = m · scale · lora_up.bias                                      (PEFT lora_bias)

scale = α/r with r = ``lora_down.shape[0]``; α missing or 0 → α = r (kohya ``networks/lora.py``,
LyCORIS ``locon.py``); PEFT: α = ``lora_alpha`` from the config, α/√r with ``use_rslora``.
LyCORIS rs-LoRA files need nothing special: LyCORIS saves α·√r so that α/r reproduces α/√r.
"""

from __future__ import annotations

from types import MappingProxyType

import torch

from ..errors import LoRAFormatError
from .base import Convention, Layer, Tensor, as_weight_shape, f32, lora_scale, require, scalar


class LoRALayer(Layer):
    kind = "lora"
    leaves = frozenset(
        {"lora_up.weight", "lora_down.weight", "lora_mid.weight", "alpha", "lora_up.bias"}
    )
    triggers = ("lora_down.weight", "lora_up.weight")
    spellings = MappingProxyType(
        {
            "lora_A.weight": "lora_down.weight",  # PEFT, diffusers ≥ 0.24
            "lora_B.weight": "lora_up.weight",
            "lora_B.bias": "lora_up.bias",
            "lora.down.weight": "lora_down.weight",  # diffusers UNet, 0.2x
            "lora.up.weight": "lora_up.weight",
            "lora_linear_layer.down.weight": "lora_down.weight",  # diffusers text encoder, 0.2x
            "lora_linear_layer.up.weight": "lora_up.weight",
            **{leaf: leaf for leaf in ("lora_down.weight", "lora_up.weight", "lora_mid.weight")},
            "alpha": "alpha",
        }
    )

    def __init__(
        self,
        up: Tensor,
        down: Tensor,
        mid: Tensor | None = None,
        alpha: float | None = None,
        convention: Convention | None = None,
        up_bias: Tensor | None = None,
    ):
        convention = convention or Convention()
        if up.dim() not in (2, 4) or down.dim() not in (2, 4):
            raise LoRAFormatError(
                f"lora_up/lora_down must be 2-D or 4-D, got {tuple(up.shape)} / {tuple(down.shape)}"
            )
        self.rank = int(down.shape[0])
        if self.rank == 0:
            raise LoRAFormatError("rank 0 LoRA layer")
        up_rank = int(up.shape[1])
        if mid is None and up_rank != self.rank:
            raise LoRAFormatError(
                f"lora_up {tuple(up.shape)} and lora_down {tuple(down.shape)} ranks differ"
            )
        if up.dim() == 4 and any(int(k) != 1 for k in up.shape[2:]):
            # the kernel lives in lora_down (or lora_mid); an up projection is always 1x1
            raise LoRAFormatError(f"lora_up {tuple(up.shape)} must have a 1x1 kernel")
        bad_mid = mid is not None and (
            mid.dim() != 4 or mid.shape[0] != up_rank or mid.shape[1] != self.rank
        )
        if bad_mid:
            raise LoRAFormatError(
                f"lora_mid {tuple(mid.shape)} does not fit lora_up {tuple(up.shape)} / "
                f"lora_down {tuple(down.shape)}"
            )
        self.up, self.down, self.mid, self.up_bias = up, down, mid, up_bias
        self.alpha = alpha
        self.scale = lora_scale(alpha, self.rank, convention)

    @property
    def touches_bias(self) -> bool:
        return self.up_bias is not None

    @property
    def format(self) -> str | None:
        """A Tucker/CP middle factor is LyCORIS's alone; plain LoRA/LoCon is kohya's too."""
        return "lycoris" if self.mid is not None else None

    @classmethod
    def from_state_dict(cls, leaves, convention):
        up, down = require(leaves, "lora_up.weight", "lora_down.weight")
        return cls(
            up,
            down,
            leaves.get("lora_mid.weight"),
            scalar(leaves.get("alpha")),
            convention,
            leaves.get("lora_up.bias"),
        )

    def tensors(self):
        out = {"lora_up.weight": self.up, "lora_down.weight": self.down}
        if self.mid is not None:
            out["lora_mid.weight"] = self.mid
        if self.up_bias is not None:
            out["lora_up.bias"] = self.up_bias
        return out

    def delta_shape(self):
        out = int(self.up.shape[0])
        if self.mid is not None:
            return (out, int(self.down.shape[1]), *self.mid.shape[2:])
        return (out, *self.down.shape[1:])

    def magnitude_bound(self, weight):
        if self.mid is not None or self.sparse is not None:
            return None
        if not {"lora_up.weight", "lora_down.weight"} <= self.max_abs.keys():
            self.max_abs = {
                "lora_up.weight": float(self.up.abs().max()),
                "lora_down.weight": float(self.down.abs().max()),
            }
        up, down = self.max_abs["lora_up.weight"], self.max_abs["lora_down.weight"]
        return abs(self.scale * weight) * up * down * self.rank

    def in_features(self):
        return int(self.down.shape[1])

    def delta(self, device) -> Tensor:
        """up @ down (unscaled) in fp32, natural shape."""
        up = f32(self.up, device).flatten(1)
        down = f32(self.down, device).flatten(1)
        if self.mid is not None:
            mid = f32(self.mid, device)
            return torch.einsum("m n ..., i m, n j -> i j ...", mid, up, down)
        return (up @ down).reshape(self.delta_shape())

    def residuals(self, params, weight):
        w = params["weight"]
        dw = as_weight_shape(self.delta(w.device), w) * (self.scale * weight)
        dw = self._with_sparse(dw, w, weight)
        db = None
        if self.up_bias is not None:
            db = f32(self.up_bias, w.device) * (self.scale * weight)
        return {"weight": dw, "bias": db}

    # Fast path used by the patcher for plain (non-Tucker) LoRA: one GEMM straight into the
    # fresh output tensor, no separate ΔW allocation.
    def add_weight(self, acc: Tensor | None, w: Tensor, weight: float) -> Tensor:
        if self.mid is not None or self.sparse is not None:
            return super().add_weight(acc, w, weight)
        up = f32(self.up, w.device).flatten(1)
        down = f32(self.down, w.device).flatten(1)
        alpha = self.scale * weight
        if acc is None:
            base = w.reshape(w.shape[0], -1)
            return torch.addmm(base, up, down, alpha=alpha).reshape(w.shape)
        acc.view(acc.shape[0], -1).addmm_(up, down, alpha=alpha)
        return acc
