"""A LoRA's weight: how strongly it is applied, to the whole model or per component, per
block, and during which denoising steps.

Each module of a component is patched with that component's weight ``m``
(``W' = W + residual(W, m)``; for a plain LoRA ``W + m·(α/r)·up·down``, see `patcher`). A
number applies to every component; a mapping names components (``unet``, ``text_encoder``,
``text_encoder_2``) and the others are not patched (weight 0). A1111's ``<lora:name:te:unet>``
is ``{"unet": unet, "text_encoder": te, "text_encoder_2": te}``.

A mapping may also carry the A1111 extensions' per-LoRA options:

* ``block_weights``: a preset name or a vector (`blocks`); a module's weight is then its
  component's weight times its block's number.
* ``start`` / ``stop``: the steps the LoRA is active in — a float is a fraction of the
  denoising (0.0–1.0), an int a step number counted from 1; active from ``start`` up to, not
  including, ``stop``. The engine patches what it is given; generation applies the window.

A mapping with options and no component (``<lora:x:lbw=OUTD>``) leaves the components'
weights open: generation fills them with the LoRA's default weight (`with_components`), the
engine reads them as 1.0 (as A1111 does).

One check serves every caller — the request boundary, recipes read back, the patcher — so a
weight is refused with the same message wherever it enters.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence

from typing_extensions import TypedDict

from .bases import COMPONENTS
from .blocks import PRESETS, check_for_base, check_vector, resolve_preset
from .errors import LoRAError

#: the options a weight mapping may carry besides components
OPTIONS = ("block_weights", "start", "stop")
_PRESET_NAME = re.compile(r"^[A-Za-z0-9_.+-]{1,40}$")


class WeightMapping(TypedDict, total=False):
    """The mapping form of a weight (every key optional)."""

    unet: float
    text_encoder: float
    text_encoder_2: float
    block_weights: str | list[float]
    start: int | float
    stop: int | float


Strength = float | WeightMapping


def _finite(value: object) -> bool:
    return not isinstance(value, bool) and isinstance(value, int | float) and math.isfinite(value)


def _block_weights(value: object, label: str) -> str | list[float]:
    if isinstance(value, str) and "," in value:  # "1,0,0.5,…" as typed in a prompt
        value = [part.strip() for part in value.split(",")]
    if isinstance(value, str):
        if not _PRESET_NAME.match(value.strip()):
            raise LoRAError(f"{label}: lbw {value!r} is neither a preset name nor a vector")
        return value.strip()
    if not isinstance(value, Sequence):
        raise LoRAError(f"{label}: lbw must be a preset name or a list of numbers")
    check_vector(value, label)  # before reading a long list value by value
    out = []
    for v in value:
        if isinstance(v, str):
            try:
                v = float(v)
            except ValueError:
                raise LoRAError(f"{label}: lbw value {v!r} is not a number") from None
        if not _finite(v):
            raise LoRAError(f"{label}: lbw value {v!r} is not a finite number")
        out.append(float(v))
    return out


def _window_end(value: object, key: str, label: str) -> int | float:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if _finite(value) and 0.0 <= float(value) <= 1.0:
        return float(value)
    raise LoRAError(
        f"{label}: {key}= must be a step number (an integer from 1) or a fraction of the "
        f"denoising with a decimal point (0.0 to 1.0), not {value!r}"
    )


def _options(value: Mapping, label: str) -> dict:
    out: dict = {}
    if "block_weights" in value:
        out["block_weights"] = _block_weights(value["block_weights"], label)
    for key in ("start", "stop"):
        if key in value:
            out[key] = _window_end(value[key], key, label)
    start, stop = out.get("start"), out.get("stop")
    if start is not None and stop is not None and type(start) is type(stop) and start >= stop:
        raise LoRAError(f"{label}: start={start} must come before stop={stop}")
    return out


def normalise_strength(value: object, label: str) -> Strength:
    """`value` checked and in its one form: a float, or a dict naming every component (0.0
    for those left out; none when only options are given) and its options, so equal weights
    compare equal. `label` names the LoRA in errors."""
    if isinstance(value, bool):
        raise LoRAError(f"{label}: weight must be a number or a dict, not {value!r}")
    if isinstance(value, int | float):
        if not math.isfinite(value):
            raise LoRAError(f"{label}: weight {value!r} is not finite")
        return float(value)
    if isinstance(value, Mapping):
        for k, v in value.items():
            if k in OPTIONS:
                continue
            if k not in COMPONENTS:
                raise LoRAError(
                    f"{label}: unknown component {k!r} in weight (use {', '.join(COMPONENTS)}; "
                    f"options: {', '.join(OPTIONS)})"
                )
            if not _finite(v):
                raise LoRAError(f"{label}: weight for {k!r} must be a finite number, not {v!r}")
        options = _options(value, label)
        if options and not any(c in value for c in COMPONENTS):
            return WeightMapping(**options)
        return WeightMapping(**{c: float(value.get(c, 0.0)) for c in COMPONENTS}, **options)
    raise LoRAError(f"{label}: weight must be a number or a dict, not {type(value).__name__}")


def component_weights(value: object, label: str) -> dict[str, float]:
    """Every component's weight (a number applies to all; open components are 1.0), checked
    by `normalise_strength`."""
    weight = normalise_strength(value, label)
    if not isinstance(weight, Mapping):
        return dict.fromkeys(COMPONENTS, weight)
    if not any(c in weight for c in COMPONENTS):
        return dict.fromkeys(COMPONENTS, 1.0)
    return {c: weight[c] for c in COMPONENTS}


def with_components(weight: Strength, default: Strength) -> Strength:
    """`weight` with open components filled from `default` (a weight without options)."""
    if not isinstance(weight, Mapping) or any(c in weight for c in COMPONENTS):
        return weight
    filled = component_weights(default, "default")
    return WeightMapping(**filled, **weight)  # type: ignore[typeddict-item]


def options_of(weight: Strength) -> dict:
    """The options a checked weight carries (``block_weights``, ``start``, ``stop``)."""
    if not isinstance(weight, Mapping):
        return {}
    return {k: weight[k] for k in OPTIONS if k in weight}


def with_user_presets(
    weight: Strength, base: str | None, presets: Mapping[str, Sequence[float]], label: str
) -> Strength:
    """`weight` with a user's preset name (`presets`) replaced by its vector — a default
    preset keeps its name — and its block weights checked against the model's `base`:
    `LoRAError` for an unknown preset or a length that fits neither of the base's forms."""
    blocks = options_of(weight).get("block_weights")
    if blocks is None or (isinstance(blocks, str) and blocks in PRESETS):
        return weight
    if isinstance(blocks, str):  # a user's preset: checked like a vector typed in
        blocks = _block_weights(resolve_preset(blocks, label, presets), label)
        weight = WeightMapping(**{**weight, "block_weights": blocks})  # type: ignore[typeddict-item]
    check_for_base(blocks, base, label)
    return weight
