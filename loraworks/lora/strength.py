"""A LoRA's weight: how strongly it is applied, to the whole model or per component.

Each module of a component is patched with that component's weight ``m``
(``W' = W + residual(W, m)``; for a plain LoRA ``W + m·(α/r)·up·down``, see `patcher`). A
number applies to every component; a mapping names components (``unet``, ``text_encoder``,
``text_encoder_2``) and the others are not patched (weight 0). A1111's ``<lora:name:te:unet>``
is ``{"unet": unet, "text_encoder": te, "text_encoder_2": te}``.

One check serves every caller — the request boundary, recipes read back, the patcher — so a
weight is refused with the same message wherever it enters.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from .bases import COMPONENTS
from .errors import LoRAError

Strength = float | Mapping[str, float]


def normalise_strength(value: object, label: str) -> float | dict[str, float]:
    """`value` checked and in its one form: a float, or a dict naming every component (0.0
    for those left out), so equal weights compare equal. `label` names the LoRA in errors."""
    if isinstance(value, bool):
        raise LoRAError(f"{label}: weight must be a number or a dict, not {value!r}")
    if isinstance(value, int | float):
        if not math.isfinite(value):
            raise LoRAError(f"{label}: weight {value!r} is not finite")
        return float(value)
    if isinstance(value, Mapping):
        for k, v in value.items():
            if k not in COMPONENTS:
                raise LoRAError(
                    f"{label}: unknown component {k!r} in weight (use {', '.join(COMPONENTS)})"
                )
            if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
                raise LoRAError(f"{label}: weight for {k!r} must be a finite number, not {v!r}")
        return {c: float(value.get(c, 0.0)) for c in COMPONENTS}
    raise LoRAError(f"{label}: weight must be a number or a dict, not {type(value).__name__}")


def component_weights(value: object, label: str) -> dict[str, float]:
    """Every component's weight (a number applies to all), checked by `normalise_strength`."""
    weight = normalise_strength(value, label)
    return weight if isinstance(weight, dict) else dict.fromkeys(COMPONENTS, weight)
