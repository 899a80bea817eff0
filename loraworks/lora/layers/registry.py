"""The layer-kind registry: which kind a module's leaves are, and the tables derived from kinds.

Every table here is derived from the registered classes (``Layer.triggers``, ``spellings``,
``refused``, ``count_leaves``), so adding a kind is one module plus one `register` call::

    from loraworks.lora.layers import Layer, register

    @register
    class MyLayer(Layer):
        kind = "mine"
        leaves = frozenset({"my_a", "my_b", "alpha"})
        triggers = ("my_a",)
        ...

Wrappers (``Layer.wraps`` non-empty, e.g. DoRA) are applied around the layer built from the other
leaves; a LyCORIS sparse bias (`SparseDiff`) rides along any kind.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping

from ..errors import LoRAFormatError
from .base import LYCORIS, Convention, Layer, SparseDiff, Tensor

_KINDS: list[type[Layer]] = []


def register(cls: type[Layer]) -> type[Layer]:
    """Make `cls` a layer kind (usable as a class decorator). Its triggers must not identify
    another kind, and its spellings must not respell another kind's leaf."""
    if not cls.triggers:
        raise ValueError(f"{cls.__name__}: a layer kind needs at least one trigger leaf")
    taken = {leaf: other for other in _KINDS for leaf in other.triggers}
    clash = sorted(leaf for leaf in cls.triggers if leaf in taken and taken[leaf] is not cls)
    if clash:
        raise ValueError(f"{cls.__name__}: trigger leaves {clash} already identify another kind")
    known = spellings()
    for spelling, leaf in cls.spellings.items():
        if known.get(spelling, leaf) != leaf:
            raise ValueError(f"{cls.__name__}: {spelling!r} already means {known[spelling]!r}")
    if cls not in _KINDS:
        _KINDS.append(cls)
    return cls


def kinds() -> tuple[type[Layer], ...]:
    """The registered kinds, in registration order."""
    return tuple(_KINDS)


def spellings() -> Mapping[str, str]:
    """Every PEFT / diffusers leaf spelling → the leaf of the kind that reads it."""
    return _spellings(kinds())


def leaf_heads() -> frozenset[str]:
    """First path segment of every spelling: where a module path ends in a PEFT key."""
    return _heads(kinds())


@functools.cache
def _spellings(registered: tuple[type[Layer], ...]) -> Mapping[str, str]:
    out: dict[str, str] = {}
    for cls in registered:
        out.update(cls.spellings)
    return out


@functools.cache
def _heads(registered: tuple[type[Layer], ...]) -> frozenset[str]:
    return frozenset(k.split(".", 1)[0] for k in _spellings(registered))


def layer_from_leaves(
    leaves: dict[str, Tensor], convention: Convention = LYCORIS, name: str = "?"
) -> Layer:
    """Build the typed layer for one module. Raises `LoRAFormatError` naming unknown keys."""
    leaves = dict(leaves)
    sparse = _pop_sparse(leaves, name)
    wrappers = [(c, {k: leaves.pop(k) for k in c.triggers if k in leaves}) for c in _wrappers()]
    cls = _kind_of(leaves, name)
    _check_leaves(cls, leaves, name)
    try:
        layer = cls.from_state_dict(leaves, convention)
    except LoRAFormatError as e:
        raise LoRAFormatError(f"{name}: {e}") from None
    if sparse is not None:
        layer.sparse = sparse
    for wrapper, found in wrappers:
        if found:
            layer = _wrap(wrapper, layer, found, name)
    return layer


def _wrappers() -> list[type[Layer]]:
    return [c for c in _KINDS if c.wraps]


def _pop_sparse(leaves: dict[str, Tensor], name: str) -> SparseDiff | None:
    if not any(k in leaves for k in SparseDiff.leaves):
        return None
    try:
        parts = [leaves.pop(k) for k in SparseDiff.leaves]
    except KeyError:
        raise LoRAFormatError(f"{name}: sparse bias needs {', '.join(SparseDiff.leaves)}") from None
    for leaf, t in zip(SparseDiff.leaves, parts, strict=True):
        _check_dtype(leaf, t, SparseDiff.count_leaves, name)
    try:
        return SparseDiff(*parts)
    except LoRAFormatError as e:
        raise LoRAFormatError(f"{name}: {e}") from None


def _kind_of(leaves: dict[str, Tensor], name: str) -> type[Layer]:
    for cls in _KINDS:
        for leaf, what in cls.refused.items():
            if leaf in leaves:
                raise LoRAFormatError(
                    f"{name}: {what} layers are not supported (keys: {', '.join(sorted(leaves))})"
                )
    cls = next((c for c in _KINDS if not c.wraps and _triggered(c, leaves)), None)
    if cls is None:
        raise LoRAFormatError(
            f"{name}: unknown LoRA layer kind with keys {', '.join(sorted(leaves)) or '(none)'}"
        )
    return cls


def _triggered(cls: type[Layer], leaves: dict[str, Tensor]) -> bool:
    return any(k in leaves for k in cls.triggers)


def _check_leaves(cls: type[Layer], leaves: dict[str, Tensor], name: str) -> None:
    unknown = sorted(set(leaves) - cls.leaves)
    if unknown:
        raise LoRAFormatError(
            f"{name}: keys {', '.join(unknown)} are not part of a {cls.kind} layer "
            f"(layer keys: {', '.join(sorted(leaves))})"
        )
    for leaf, t in leaves.items():
        _check_dtype(leaf, t, cls.count_leaves, name)


def _check_dtype(leaf: str, t: Tensor, count_leaves: frozenset[str], name: str) -> None:
    if not t.is_floating_point() and leaf not in count_leaves:
        raise LoRAFormatError(
            f"refusing this LoRA: layer {name!r} stores {leaf!r} as {t.dtype}, not as "
            "floating-point weights"
        )


def _wrap(wrapper: type[Layer], inner: Layer, found: dict[str, Tensor], name: str) -> Layer:
    if not isinstance(inner, wrapper.wraps):
        raise LoRAFormatError(f"{name}: {wrapper.kind} leaves on a {inner.kind} layer")
    for leaf, t in found.items():
        _check_dtype(leaf, t, wrapper.count_leaves, name)
    try:
        return wrapper.wrap(inner, found)
    except LoRAFormatError as e:
        raise LoRAFormatError(f"{name}: {e}") from None
