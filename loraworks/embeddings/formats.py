"""The file layouts of textual-inversion embeddings, each with one `is_X_format` predicate and
one pure converter from a file's tensors (nested pickles flattened to dotted keys, so that
A1111's ``{"string_to_param": {"*": t}}`` reads as ``string_to_param.*``) to an `Embedding`:

* A1111 ``.pt``/``.bin``: ``string_to_param.*`` (one term, count × width); ``string_to_token``,
  ``name``, ``step``… are not tensors and are left out.
* kohya ``.safetensors``: ``emb_params`` (count × width).
* SDXL (kohya, A1111, Civitai): ``clip_l`` (768) and ``clip_g`` (1280), equal counts.
* diffusers ``learned_embeds.bin``/``.safetensors``: ``{token: width or count × width}``, the
  width one a text encoder has.
* embeddings bundled in a LoRA file (kohya, A1111): ``bundle_emb.<name>.<one of the above>``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch

from loraworks.lora.formats.kohya import BUNDLED_EMBEDDING_PREFIX

from .errors import EmbeddingFileError
from .model import ENCODER_WIDTHS, Embedding, make_embedding

Tensors = dict[str, torch.Tensor]
#: a file's tensor shapes by key: what the predicates read (a safetensors header gives them
#: without reading the tensors, so the model manager can tell an embedding from a LoRA)
Shapes = Mapping[str, tuple[int, ...]]
A1111_PARAMS = "string_to_param."


def flatten(obj: Any, prefix: str = "") -> Tensors:
    """The tensors of a loaded pickle's nested string-keyed dicts, keyed by dotted path."""
    if isinstance(obj, torch.Tensor):
        return {prefix.removesuffix("."): obj}
    if not isinstance(obj, dict):
        return {}
    out: Tensors = {}
    for key, value in obj.items():
        if isinstance(key, str):
            out.update(flatten(value, f"{prefix}{key}."))
    return out


def is_a1111_format(shapes: Shapes) -> bool:
    return any(k.startswith(A1111_PARAMS) for k in shapes)


def from_a1111(tensors: Tensors, name: str) -> Embedding:
    terms = {k: t for k, t in tensors.items() if k.startswith(A1111_PARAMS)}
    if len(terms) != 1:
        raise EmbeddingFileError(
            f"embedding '{name}': string_to_param holds {len(terms)} terms; A1111 files hold one"
        )
    return make_embedding(name, "a1111", terms)


def is_sdxl_format(shapes: Shapes) -> bool:
    return "clip_l" in shapes and "clip_g" in shapes


def from_sdxl(tensors: Tensors, name: str) -> Embedding:
    return make_embedding(name, "sdxl", {k: tensors[k] for k in ("clip_l", "clip_g")})


def is_kohya_format(shapes: Shapes) -> bool:
    return "emb_params" in shapes


def from_kohya(tensors: Tensors, name: str) -> Embedding:
    return make_embedding(name, "kohya", {"emb_params": tensors["emb_params"]})


def is_diffusers_format(shapes: Shapes) -> bool:
    """One tensor of one or more vectors as wide as a text encoder (any single-tensor file
    would otherwise pass: a stray ``{"some.weight": 3×3}`` is no embedding)."""
    if len(shapes) != 1:
        return False
    shape = next(iter(shapes.values()))
    return len(shape) in (1, 2) and shape[-1] in ENCODER_WIDTHS


def from_diffusers(tensors: Tensors, name: str) -> Embedding:
    return make_embedding(name, "diffusers", tensors)


_CONVERTERS: tuple[tuple[Callable[[Shapes], bool], Callable[[Tensors, str], Embedding]], ...] = (
    (is_a1111_format, from_a1111),
    (is_sdxl_format, from_sdxl),
    (is_kohya_format, from_kohya),
    (is_diffusers_format, from_diffusers),
)


def is_embedding(shapes: Shapes) -> bool:
    """Whether a file of these tensors is one embedding in a layout above (not a LoRA with
    bundled ones)."""
    return not is_bundle_format(shapes) and any(test(shapes) for test, _ in _CONVERTERS)


def shapes_of(tensors: Tensors) -> Shapes:
    return {k: tuple(t.shape) for k, t in tensors.items()}


def convert(tensors: Tensors, name: str) -> Embedding:
    shapes = shapes_of(tensors)
    for test, converter in _CONVERTERS:
        if test(shapes):
            return converter(tensors, name)
    shown = ", ".join(sorted(tensors)[:5]) or "no tensors"
    raise EmbeddingFileError(
        f"'{name}' is not a textual-inversion embedding: no string_to_param, emb_params, "
        f"clip_l + clip_g or single token vector (it holds {shown})"
    )


def is_bundle_format(shapes: Shapes) -> bool:
    return any(k.startswith(BUNDLED_EMBEDDING_PREFIX) for k in shapes)


def from_bundle(tensors: Tensors) -> list[Embedding]:
    """The embeddings bundled in a LoRA's tensors, by name (LoRA layers are ignored here)."""
    groups: dict[str, Tensors] = {}
    for key, tensor in tensors.items():
        if key.startswith(BUNDLED_EMBEDDING_PREFIX):
            name, _, rest = key.removeprefix(BUNDLED_EMBEDDING_PREFIX).partition(".")
            groups.setdefault(name, {})[rest] = tensor
    return [convert(group, name) for name, group in sorted(groups.items())]
