"""DoRA: weight-decomposed LoRA, wrapping any LoRA-family layer (LoRA, LoHa, LoKr).

Leaves: LyCORIS ``dora_scale`` — shape [out, 1, …] (``wd_on_out=True``, the current default,
same axis as PEFT) or [1, in, …] (older LyCORIS, the axis A1111 assumes); PEFT
``lora_magnitude_vector`` [out]. ‖·‖ is the L2 norm of V = W + ΔW per output row (over all other
dims) or per input column.

The user weight m means what the file's producer means by it:

* LyCORIS (``dora_scale``; ``functional/general.py::weight_decompose``)::

      V = W + ΔW₁         (ΔW₁ = the inner layer at weight 1)
      s = dora / ‖V‖;   s ← m·(s − 1) + 1
      W' = V ⊙ s

  (so at m = 0 the model gets W + ΔW₁, not W: LyCORIS's own behaviour; the patcher skips
  weight-0 entries altogether, so "weight 0 = off" still holds.)
* PEFT (``lora_magnitude_vector``; ``lora/dora.py``): m scales the LoRA part as PEFT's adapter
  scale does::

      V = W + m·ΔW₁;   W' = mag ⊙ V / ‖V‖

A1111 (``((W+ΔW)·dora/‖W+ΔW‖ − W)·m``) and ComfyUI (``W + m·(W' − W)``; output-axis branch
normalising by ‖W‖) differ; we follow the producers above. The bias is not decomposed.
"""

from __future__ import annotations

from types import MappingProxyType

from ..errors import LoRAFormatError
from .base import Layer, Tensor, as_weight_shape, f32
from .loha import LoHaLayer
from .lokr import LoKrLayer
from .lora import LoRALayer


class DoRALayer(Layer):
    kind = "dora"
    linear = False
    triggers = ("dora_scale", "lora_magnitude_vector")
    spellings = MappingProxyType(
        {
            "dora_scale": "dora_scale",
            "lora_magnitude_vector": "lora_magnitude_vector",
            "lora_magnitude_vector.weight": "lora_magnitude_vector",  # PEFT ≥ 0.14
        }
    )
    wraps = (LoRALayer, LoHaLayer, LoKrLayer)

    def __init__(self, inner: Layer, magnitude: Tensor, mode: str):
        if mode not in ("lycoris", "peft"):
            raise ValueError(mode)
        self.inner, self.magnitude, self.mode = inner, magnitude, mode
        self.kind = f"dora({inner.kind})"
        shape = inner.delta_shape()
        self.on_out = True
        if mode == "lycoris" and magnitude.dim() >= 2 and magnitude.shape[0] == 1:
            self.on_out = shape is not None and shape[0] == 1
        n = magnitude.numel()
        if shape is not None:
            want = shape[0] if self.on_out else (shape[1] if len(shape) > 1 else -1)
            if n != want:
                raise LoRAFormatError(
                    f"DoRA magnitude of shape {tuple(magnitude.shape)} does not fit the layer's "
                    f"weight shape {tuple(shape)}"
                )

    @classmethod
    def wrap(cls, inner, leaves):
        mode = "lycoris" if "dora_scale" in leaves else "peft"
        return cls(inner, next(iter(leaves.values())), mode)

    @property
    def format(self) -> str | None:
        """``dora_scale`` is LyCORIS's spelling; PEFT's magnitude leaves the inner kind's."""
        return "lycoris" if self.mode == "lycoris" else self.inner.format

    @property
    def touches_bias(self) -> bool:
        return getattr(self.inner, "touches_bias", False)

    def tensors(self):
        key = "dora_scale" if self.mode == "lycoris" else "lora_magnitude_vector"
        return {**self.inner.all_tensors(), key: self.magnitude}

    def delta_shape(self):
        return self.inner.delta_shape()

    def check(self, weight_shape):
        return super().check(weight_shape) or self.inner.check(weight_shape)

    def out_features(self):
        return self.inner.out_features()

    def in_features(self):
        return self.inner.in_features()

    def _norm(self, v: Tensor) -> Tensor:
        if self.on_out:
            return v.reshape(v.shape[0], -1).norm(dim=1).reshape(v.shape[0], *[1] * (v.dim() - 1))
        t = v.transpose(0, 1)
        n = t.reshape(t.shape[0], -1).norm(dim=1)
        return n.reshape(1, v.shape[1], *[1] * (v.dim() - 2))

    def residuals(self, params, weight):
        w = params["weight"]
        inner_weight = 1.0 if self.mode == "lycoris" else weight
        res = self.inner.residuals(params, inner_weight)
        v = w + as_weight_shape(res["weight"], w)
        norm = self._norm(v)
        mag = f32(self.magnitude, w.device).reshape(norm.shape)
        scale = mag / norm
        if self.mode == "lycoris" and weight != 1:
            scale = weight * (scale - 1) + 1
        dw = v * scale - w
        db = res.get("bias")
        if db is not None and self.mode == "lycoris":
            db = db * weight
        return {"weight": dw, "bias": db}
