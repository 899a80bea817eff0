"""Putting an embedding's vectors into a text encoder's input for one call, without changing
the shared tokenizer or encoder: the token ids hold a placeholder where the vectors go, and a
forward hook on the encoder's input-embedding layer, removed in `finally`, writes the vectors
over those rows of its output. Nothing is added to the vocabulary and no weight is touched, so
the next request sees the model as loaded (the same bit-exact rule as LoRA restore)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from loraworks.lora.bases import BaseName

from .errors import EmbeddingBaseMismatch
from .model import ENCODER_WIDTHS, Encoder, base_label, compatible_bases

#: the id written where vectors go: never the end token (CLIP pools at the first end token, or
#: at the highest id for configs from before transformers#24773, which 0 never is)
PLACEHOLDER_ID = 0


def encoder_of(text_encoder: Any) -> Encoder | None:
    """Which encoder `text_encoder` is, from its input width."""
    return ENCODER_WIDTHS.get(text_encoder.get_input_embeddings().weight.shape[1])


def check_fits(embedding_base: BaseName, label: str, base: BaseName, model: str) -> list[str]:
    """Refuses an embedding for another base (naming both); the warning for an SD1 embedding
    on SDXL, whose CLIP-G encoder gets nothing in its place (ComfyUI's behaviour; A1111 drops
    such an embedding without a word)."""
    if base not in compatible_bases(embedding_base):
        raise EmbeddingBaseMismatch(
            f"embedding '{label}' is for {base_label(embedding_base)} but the main model "
            f"'{model}' is {base_label(base)}; use a {base_label(base)} embedding or a "
            f"{base_label(embedding_base)} model"
        )
    if base == "sdxl" and embedding_base == "sd1":
        return [
            f"embedding '{label}' is an SD1 embedding: on this SDXL model it goes to the CLIP-L "
            "encoder only; the CLIP-G encoder sees the prompt without it"
        ]
    return []


@contextmanager
def injected(text_encoder: Any, positions: list[int], vectors: list[torch.Tensor]) -> Iterator:
    """Within the block, `text_encoder`'s input embeddings at `positions` (of a one-row call)
    are `vectors`; no-op when there are none."""
    if not positions:
        yield
        return
    index = torch.tensor(positions)
    stacked = torch.stack(vectors)

    def replace(_module: Any, _args: Any, output: torch.Tensor) -> torch.Tensor:
        out = output.clone()
        out[0, index.to(out.device)] = stacked.to(out.device, out.dtype)
        return out

    handle = text_encoder.get_input_embeddings().register_forward_hook(replace)
    try:
        yield
    finally:
        handle.remove()
