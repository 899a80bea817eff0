"""Block weights with the semantics of A1111's LoRA Block Weight extension (``lbw=``).

A vector gives one number per *slot*; a layer's weight is its component's weight times the
number of the slot its module lies in. Slots are named as in the original (SGM) UNet: BASE (the
text encoders), IN00–IN11 (``input_blocks.N``), MID (``middle_block``, the extension's M00) and
OUT00–OUT11 (``output_blocks.N``). In diffusers' names (SD1/SD2 and SDXL alike)::

    down_blocks.i.{resnets,attentions}.j -> IN(3i+j+1)   down_blocks.i.downsamplers -> IN(3i+3)
    mid_block                            -> MID
    up_blocks.i.{resnets,attentions}.j   -> OUT(3i+j)     up_blocks.i.upsamplers     -> OUT(3i+2)

The extension leaves modules outside every block (time and SDXL's add embedding, the final
norm and conv) at the plain weight; here they follow a block, so that ``NONE`` really means no
LoRA: ``conv_in`` (which is ``input_blocks.0``), ``time_embedding`` and ``add_embedding`` go
with IN00, ``conv_norm_out`` and ``conv_out`` with the last output block (OUT11; SDXL OUT08).

Vector lengths, as the extension takes them: SD1/SD2 17 (the blocks a plain LoRA trains) or 26
(every slot, for LyCORIS/full files); SDXL 12 or 20. A short vector names fewer slots; a slot
it does not name gets 0 (the extension's rule). Presets are named vectors: the extension's
defaults, given here on all 26 slots (on the 17 slots its strings name they are its values;
a slot they do not name takes the value of its named neighbours, so that ``ALL`` is the plain
weight for every file), plus the user's own (`resolve_preset` takes them as a mapping).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from .errors import LoRAError


def _outs(first: int, end: int) -> tuple[str, ...]:
    return tuple(f"OUT{i:02d}" for i in range(first, end))


#: every slot, in the extension's 26-value order (its "M00" is MID here)
SLOTS: tuple[str, ...] = (
    "BASE",
    *(f"IN{i:02d}" for i in range(12)),
    "MID",
    *_outs(0, 12),
)
#: the slots a vector of each length names, in order
FORMS: dict[int, tuple[str, ...]] = {
    26: SLOTS,
    17: ("BASE", "IN01", "IN02", "IN04", "IN05", "IN07", "IN08", "MID", *_outs(3, 12)),
    20: ("BASE", *(f"IN{i:02d}" for i in range(9)), "MID", *_outs(0, 9)),
    12: ("BASE", "IN04", "IN05", "IN07", "IN08", "MID", *_outs(0, 6)),
}
#: vector lengths per base: (plain LoRA, LyCORIS/full)
LENGTHS: dict[str, tuple[int, int]] = {"sd1": (17, 26), "sd2": (17, 26), "sdxl": (12, 20)}


def _preset(ones: str) -> tuple[float, ...]:
    """A 0/1 preset from the slots it sets to 1 (space-separated names or ranges A-B)."""
    chosen: set[str] = set()
    for part in ones.split():
        first, _, last = part.partition("-")
        lo, hi = SLOTS.index(first), SLOTS.index(last or first)
        chosen.update(SLOTS[lo : hi + 1])
    return tuple(1.0 if slot in chosen else 0.0 for slot in SLOTS)


#: the extension's default presets on every slot (its 17-value strings on the slots they name)
PRESETS: dict[str, tuple[float, ...]] = {
    "NONE": _preset(""),
    "ALL": _preset("BASE-OUT11"),
    "INS": _preset("BASE IN00-IN04"),
    "IND": _preset("BASE IN05-IN11"),
    "INALL": _preset("BASE IN00-IN11"),
    "MIDD": _preset("BASE IN05-OUT06"),
    "OUTD": _preset("BASE OUT00-OUT06"),
    "OUTS": _preset("BASE OUT07-OUT11"),
    "OUTALL": _preset("BASE OUT00-OUT11"),
    "ALL0.5": (0.5,) * len(SLOTS),
}

_DOWN = re.compile(r"down_blocks\.(\d+)\.(?:(resnets|attentions)\.(\d+)|downsamplers)\.")
_UP = re.compile(r"up_blocks\.(\d+)\.(?:(resnets|attentions)\.(\d+)|upsamplers)\.")
_BEFORE = ("conv_in.", "time_embedding.", "add_embedding.", "class_embedding.")
_AFTER = ("conv_norm_out.", "conv_out.")


def slot_of(component: str, path: str, base: str | None) -> str | None:
    """The slot of module `path` of `component` (None: a UNet module of no known block)."""
    if component != "unet":
        return "BASE"
    path += "."
    if path.startswith("mid_block."):
        return "MID"
    if path.startswith(_BEFORE):
        return "IN00"
    if path.startswith(_AFTER):
        return "OUT08" if base == "sdxl" else "OUT11"
    if (m := _DOWN.match(path)) is not None:
        i = int(m.group(1))
        index = 3 * i + int(m.group(3)) + 1 if m.group(2) else 3 * i + 3
        return f"IN{index:02d}" if index < 12 else None
    if (m := _UP.match(path)) is not None:
        i = int(m.group(1))
        index = 3 * i + int(m.group(3)) if m.group(2) else 3 * i + 2
        return f"OUT{index:02d}" if index < 12 else None
    return None


def check_vector(values: Sequence[float], label: str) -> None:
    """A vector's length must be one the extension takes for some base."""
    if len(values) not in FORMS:
        raise LoRAError(
            f"{label}: lbw has {len(values)} values; SD1/SD2 take 17 (LoRA) or 26 (LyCORIS/"
            "full), SDXL 12 or 20"
        )


def check_for_base(values: Sequence[float], base: str | None, label: str) -> None:
    """The vector's length fits the model's base (or any base when that is not known)."""
    check_vector(values, label)
    lengths = LENGTHS.get(base or "")
    if lengths is not None and len(values) not in lengths:
        raise LoRAError(
            f"{label}: lbw has {len(values)} values, which fits neither a {base} LoRA "
            f"({lengths[0]}) nor a {base} LyCORIS/full file ({lengths[1]})"
        )


def resolve_preset(
    value: str, label: str, user: Mapping[str, Sequence[float]] | None = None
) -> list[float]:
    """The vector a preset name stands for: the user's presets first, then the defaults."""
    user = user or {}
    if value in user:
        return [float(v) for v in user[value]]
    if value in PRESETS:
        return list(PRESETS[value])
    known = ", ".join([*PRESETS, *sorted(user)])
    raise LoRAError(f"{label}: unknown lbw preset {value!r} (known: {known})")


def slot_ratios(
    block_weights: str | Sequence[float], base: str | None, label: str
) -> dict[str, float]:
    """Every slot's number for a checked `block_weights` (a default preset or a vector)."""
    if isinstance(block_weights, str):
        values: Sequence[float] = resolve_preset(block_weights, label)
    else:
        values = block_weights
        check_for_base(values, base, label)
    ratios = dict.fromkeys(SLOTS, 0.0)
    ratios.update(zip(FORMS[len(values)], (float(v) for v in values), strict=True))
    return ratios
