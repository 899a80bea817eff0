"""`Embedding`: a textual-inversion embedding's vectors per text encoder, whatever file layout
they came from, and the base rule read from their widths (never from the file name)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import torch

from loraworks.lora.bases import TEXT_ENCODER_2_WIDTH, BaseName

from .errors import EmbeddingShapeError, EmbeddingValueError

#: the text encoders of SD1 (and SDXL's first), SD2 and SDXL's second, by hidden width
Encoder = Literal["clip_l", "clip_h", "clip_g"]
ENCODER_WIDTHS: dict[int, Encoder] = {768: "clip_l", 1024: "clip_h", TEXT_ENCODER_2_WIDTH: "clip_g"}
_NAMES = {"sd1": "SD1", "sd2": "SD2", "sdxl": "SDXL"}


def base_label(base: str | None) -> str:
    return _NAMES.get(str(base), str(base))


@dataclass(frozen=True)
class Embedding:
    """`vectors[encoder]` is [count, width] float32: the input embeddings that stand in for the
    trigger, one row per token slot."""

    name: str
    format: str
    vectors: Mapping[Encoder, torch.Tensor]

    @property
    def count(self) -> int:
        return next(iter(self.vectors.values())).shape[0]

    @property
    def base(self) -> BaseName:
        """SD2 for OpenCLIP-H vectors, SDXL when CLIP-G vectors are there, else SD1 (CLIP-L)."""
        if "clip_h" in self.vectors:
            return "sd2"
        return "sdxl" if "clip_g" in self.vectors else "sd1"

    @property
    def compatible_bases(self) -> list[BaseName]:
        return compatible_bases(self.base)


def compatible_bases(base: BaseName) -> list[BaseName]:
    """SD1's CLIP-L is SDXL's first encoder, so an SD1 embedding also serves SDXL (there, its
    first encoder only, with a warning: `inject.check_fits`)."""
    return ["sd1", "sdxl"] if base == "sd1" else [base]


def make_embedding(name: str, format: str, raw: Mapping[str, torch.Tensor]) -> Embedding:
    """An `Embedding` from a converter's tensors: `{"clip_l": …, "clip_g": …}` (SDXL) or one
    tensor under any key, its encoder read from its width. Each is [width] or [count, width].
    Refuses no vectors, widths no encoder has, SDXL halves of different lengths, NaN/Inf."""
    if not raw:
        raise EmbeddingShapeError(f"embedding '{name}': the file holds no vectors")
    keyed = set(raw) == {"clip_l", "clip_g"}
    vectors: dict[Encoder, torch.Tensor] = {}
    for key, tensor in raw.items():
        t = tensor.detach().to("cpu", torch.float32)
        t = t.unsqueeze(0) if t.ndim == 1 else t
        if t.ndim != 2 or t.shape[0] == 0 or t.shape[1] == 0:
            raise EmbeddingShapeError(
                f"embedding '{name}': {key} has shape {tuple(tensor.shape)}; an embedding is "
                "one or more vectors (count × width), none is not one"
            )
        encoder = ENCODER_WIDTHS.get(t.shape[1])
        if encoder is None or (keyed and encoder != key):
            widths = ", ".join(f"{w} ({e})" for w, e in ENCODER_WIDTHS.items())
            raise EmbeddingShapeError(
                f"embedding '{name}': {key} vectors are {t.shape[1]} wide, which matches no "
                f"{'SDXL ' + key if keyed else 'text'} encoder ({widths})"
            )
        if not torch.isfinite(t).all():
            raise EmbeddingValueError(
                f"embedding '{name}': its {key} vectors hold NaN or infinity (a training run "
                "that diverged); use another file"
            )
        vectors[encoder] = t.contiguous()
    counts = {t.shape[0] for t in vectors.values()}
    if len(counts) > 1:
        raise EmbeddingShapeError(
            f"embedding '{name}': clip_l and clip_g hold different numbers of vectors "
            f"({', '.join(f'{e} {t.shape[0]}' for e, t in vectors.items())}); both must match"
        )
    return Embedding(name, format, vectors)
