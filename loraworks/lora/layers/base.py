"""The contract every layer kind follows.

A layer is built once from the leaves of one module's keys (``from_state_dict``) and then asked
for *residuals*: given the module's current parameters in fp32, what to add to them at the user's
weight ``m``::

    residuals({"weight": W, "bias": b_or_None}, m) -> {"weight": ΔW | None, "bias": Δb | None}

Linear kinds (LoRA, LoHa, LoKr, Full, Norm) ignore ``W``; non-linear kinds (DoRA, IA3) read it.
The patcher always passes the *original* weight, sums the residuals of every layer that targets
a module and rounds once into the module's dtype (see ``loraworks/lora/patcher.py``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import ClassVar

import torch

from ..errors import LoRAFormatError

Tensor = torch.Tensor


@dataclass(frozen=True)
class Convention:
    """How the producer of a file meant its numbers (set by the key-family converter).

    ``producer``: ``"lycoris"`` for kohya / A1111 / LyCORIS single files (alpha in the file,
    LyCORIS maths), ``"peft"`` for PEFT folders and diffusers files (alpha from a config or
    header, PEFT maths). ``alpha``/``rank`` come from a PEFT config (after ``rank_pattern`` /
    ``alpha_pattern``); ``rslora`` makes the scale alpha/√r; ``feedforward`` is PEFT IA3's
    per-module flag (input axis) when the config names it. The ``oft_*`` fields carry PEFT's
    OFT settings.
    """

    producer: str = "lycoris"
    alpha: float | None = None
    rank: int | None = None
    rslora: bool = False
    feedforward: bool | None = None
    #: PEFT OFT (``peft_oft.py``): Cayley by a Neumann series of this many terms (None: exact),
    #: COFT's eps (None: no COFT), one rotation block shared across the input; PEFT's defaults
    oft_neumann_terms: int | None = 5
    oft_coft_eps: float | None = None
    oft_block_share: bool = False


LYCORIS = Convention()


def scalar(t: Tensor | float | None) -> float | None:
    if t is None:
        return None
    if isinstance(t, Tensor):
        if t.numel() != 1:
            raise LoRAFormatError(f"alpha must be a scalar, got shape {tuple(t.shape)}")
        return float(t.reshape(()).double())  # exact for every float dtype
    return float(t)


def lora_scale(alpha: float | None, rank: int, convention: Convention) -> float:
    """α/r (or α/√r with rsLoRA); a missing or zero alpha means α = r (scale 1)."""
    if rank <= 0:
        raise LoRAFormatError(f"rank must be positive, got {rank}")
    if convention.producer == "peft" and convention.alpha is not None and alpha is None:
        alpha = convention.alpha
    if alpha is None or alpha == 0:
        alpha = math.sqrt(rank) if convention.rslora else float(rank)
    denom = math.sqrt(rank) if convention.rslora else rank
    return float(alpha) / denom


def as_weight_shape(delta: Tensor, weight: Tensor) -> Tensor:
    """Reshape a delta to the weight's shape (a [o,i,1,1] conv delta on a linear, etc.)."""
    if delta.shape == weight.shape:
        return delta
    return delta.reshape(weight.shape)


def shapes_fit(delta_shape: tuple[int, ...] | None, weight_shape: tuple[int, ...]) -> bool:
    """A delta fits when output dims agree and element counts agree (1x1 conv ↔ linear)."""
    if delta_shape is None:
        return True
    if tuple(delta_shape) == tuple(weight_shape):
        return True
    return (
        len(delta_shape) > 0
        and delta_shape[0] == weight_shape[0]
        and math.prod(delta_shape) == math.prod(weight_shape)
    )


class SparseDiff:
    """LyCORIS ``bias_indices/bias_values/bias_size``: a sparse COO *weight* residual.

    LyCORIS's extractor (``lycoris.utils.extract_diff(..., use_bias=True)``) stores what its
    low-rank factors miss, ``W_tuned - W_base - up@down``, reshaped to [out, in·k·k] and
    sparsified; it is added to ΔW at weight m (no alpha/r). It rides along any kind.
    """

    leaves: ClassVar[tuple[str, str, str]] = ("bias_indices", "bias_values", "bias_size")
    count_leaves: ClassVar[frozenset[str]] = frozenset({"bias_indices", "bias_size"})

    def __init__(self, indices: Tensor, values: Tensor, size: Tensor):
        self.indices = indices.long()
        self.values = values
        self.size = tuple(int(s) for s in size.reshape(-1).tolist())
        if self.indices.dim() != 2 or self.indices.shape[0] != len(self.size):
            raise LoRAFormatError(
                f"bias_indices shape {tuple(indices.shape)} does not fit bias_size {self.size}"
            )
        if values.dim() != 1 or values.numel() != self.indices.shape[1]:
            raise LoRAFormatError("bias_values does not match bias_indices")
        if any(s <= 0 for s in self.size):
            raise LoRAFormatError(f"bias_size {self.size} is not a valid size")
        if self.indices.numel():
            lo = self.indices.min(dim=1).values
            hi = self.indices.max(dim=1).values
            if bool((lo < 0).any()) or any(int(h) >= s for h, s in zip(hi, self.size, strict=True)):
                raise LoRAFormatError(f"bias_indices lie outside bias_size {self.size}")

    def dense(self, device, dtype=torch.float32) -> Tensor:
        return torch.sparse_coo_tensor(
            self.indices.to(device), self.values.to(device, dtype), self.size
        ).to_dense()

    def tensors(self) -> dict[str, Tensor]:
        return {"bias_indices": self.indices, "bias_values": self.values}


class Layer:
    """One module's worth of a LoRA file, of one kind.

    A kind's class is the only place that knows the kind: what it reads (``leaves``), which of
    those identify it (``triggers``), how PEFT and diffusers files spell them (``spellings``),
    its layouts we refuse (``refused``) and the format label it implies (``format``). The
    registry (``registry.py``) and the converters derive their tables from these; see
    docs/formats.md, "Adding a layer kind".
    """

    kind: ClassVar[str] = "?"
    #: leaf names (after the converter's normalisation) this kind reads
    leaves: ClassVar[frozenset[str]] = frozenset()
    #: leaves whose presence in a module's keys makes it a layer of this kind (disjoint across
    #: kinds, LyCORIS ``weight_list_det``)
    triggers: ClassVar[tuple[str, ...]] = ()
    #: leaf spellings in PEFT / diffusers keys → this kind's leaf (kohya-style files use the
    #: leaf names themselves); also what tells a converter where a module path ends
    spellings: ClassVar[Mapping[str, str]] = MappingProxyType({})
    #: leaves of layouts of this kind we cannot read → what they are (refused by name)
    refused: ClassVar[Mapping[str, str]] = MappingProxyType({})
    #: leaves that hold counts, flags or indices; every other leaf must be floating-point
    count_leaves: ClassVar[frozenset[str]] = frozenset({"alpha"})
    #: the record ``format`` this kind implies in a kohya-style file (``lycoris`` for the kinds
    #: only LyCORIS writes); None: the file's key family decides
    format: ClassVar[str | None] = None
    #: for a wrapper kind (DoRA): the kinds it wraps; its triggers are read beside theirs
    wraps: ClassVar[tuple[type[Layer], ...]] = ()
    #: True when ΔW does not depend on the module's weight
    linear: ClassVar[bool] = True
    #: True when `residuals` may return a bias delta
    touches_bias: bool = False

    sparse: SparseDiff | None = None
    #: max|x| per leaf, measured once when the file was read (`load.build`), so that
    #: `magnitude_bound` need not read the tensors again at patch time (on a GPU: no sync per
    #: layer); empty for a layer built otherwise, which then reads its tensors
    max_abs: Mapping[str, float] = MappingProxyType({})

    @classmethod
    def from_state_dict(cls, leaves: dict[str, Tensor], convention: Convention) -> Layer:
        raise NotImplementedError

    @classmethod
    def wrap(cls, inner: Layer, leaves: dict[str, Tensor]) -> Layer:
        """A wrapper kind around `inner`, from the wrapper's own `leaves`."""
        raise NotImplementedError

    # --- what the patcher asks -------------------------------------------------------------
    def residuals(self, params: dict[str, Tensor | None], weight: float) -> dict:
        raise NotImplementedError

    def delta_shape(self) -> tuple[int, ...] | None:
        """Natural shape of ΔW (checked against the module before any patching)."""
        return None

    def in_features(self) -> int | None:
        """Input width of a linear target (used by the base-model probe)."""
        return None

    def out_features(self) -> int | None:
        """Output width (rows of W; the vector size of a norm layer)."""
        shape = self.delta_shape()
        return int(shape[0]) if shape else None

    def magnitude_bound(self, weight: float) -> float | None:
        """An upper bound of max|ΔW|, or None when the kind has no cheap bound."""
        return None

    def is_conv(self) -> bool | None:
        """Whether the target is a conv (4-D weight); None when the layer does not say."""
        shape = self.delta_shape()
        if shape is None:
            return None
        return len(shape) == 4

    def tensors(self) -> dict[str, Tensor]:
        return {}

    def add_weight(self, acc: Tensor | None, w: Tensor, weight: float) -> Tensor:
        """Add this layer's weight residual to ``acc`` (fp32, owned by the patcher) or, when
        ``acc`` is None, return ``w + ΔW`` as a fresh fp32 tensor. Only used for linear
        kinds; the default goes through `residuals`."""
        dw = self.residuals({"weight": w, "bias": None}, weight)["weight"]
        if dw is None:
            return w.clone() if acc is None else acc
        dw = as_weight_shape(dw, w)
        if acc is None:
            return w + dw
        return acc.add_(dw)

    # --- helpers -------------------------------------------------------------------------------
    def all_tensors(self) -> dict[str, Tensor]:
        out = dict(self.tensors())
        if self.sparse is not None:
            out.update(self.sparse.tensors())
        return out

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.all_tensors().values())

    def sparse_fits(self, weight_shape) -> bool:
        return self.sparse is None or math.prod(self.sparse.size) == math.prod(weight_shape)

    def check(self, weight_shape: tuple[int, ...]) -> str | None:
        """Why this layer cannot patch a weight of `weight_shape` (checked for every layer
        before anything is patched), or None. Kinds without a ΔW shape of their own (IA³,
        OFT) override it."""
        ds = self.delta_shape()
        if not shapes_fit(ds, weight_shape):
            return f"layer shape {ds} does not fit weight {weight_shape}"
        if not self.sparse_fits(weight_shape):
            return f"sparse bias of size {self.sparse.size} does not fit weight {weight_shape}"
        return None

    def _with_sparse(self, delta: Tensor | None, w: Tensor, weight: float) -> Tensor | None:
        if self.sparse is None:
            return delta
        extra = self.sparse.dense(w.device).reshape(w.shape) * weight
        return extra if delta is None else as_weight_shape(delta, w) + extra

    def __repr__(self) -> str:
        shapes = {k: tuple(v.shape) for k, v in self.tensors().items()}
        return f"{type(self).__name__}({shapes})"


def f32(t: Tensor, device) -> Tensor:
    return t.to(device=device, dtype=torch.float32)


def require(leaves: dict[str, Tensor], *names: str) -> list[Tensor]:
    missing = [n for n in names if n not in leaves]
    if missing:
        raise LoRAFormatError(f"missing {', '.join(missing)} (have {', '.join(sorted(leaves))})")
    return [leaves[n] for n in names]
