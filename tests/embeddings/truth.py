"""Embeddings whose truth is known by construction: the text encoder's own input-embedding rows
for the tokens of a phrase. Injected for a trigger, they must give exactly what the phrase
gives."""

from __future__ import annotations

import torch

from loraworks.embeddings import Embedding, Lexicon, make_embedding
from loraworks.generation.conditioning import PromptEmbeddings, is_sdxl

PHRASE = "red circle"
TRIGGER = "zq-shape"


def phrase_rows(pipe, phrase: str = PHRASE) -> dict[str, torch.Tensor]:
    """Each encoder's input embeddings for the tokens of `phrase`, keyed as SDXL files key
    them (`clip_l`, `clip_g`), or under `*` for one encoder."""

    def rows(tokenizer, te) -> torch.Tensor:
        ids = tokenizer(phrase, add_special_tokens=False).input_ids
        return te.get_input_embeddings().weight[ids].detach().clone()

    if is_sdxl(pipe):
        return {
            "clip_l": rows(pipe.tokenizer, pipe.text_encoder),
            "clip_g": rows(pipe.tokenizer_2, pipe.text_encoder_2),
        }
    return {"*": rows(pipe.tokenizer, pipe.text_encoder)}


def phrase_embedding(pipe, name: str = TRIGGER) -> Embedding:
    return make_embedding(name, "test", phrase_rows(pipe))


def words(*embeddings: Embedding) -> PromptEmbeddings:
    """Each embedding under its name, as trigger and as `embedding:` name."""
    table = {e.name: e for e in embeddings}
    key = tuple((e.name, str(id(e))) for e in embeddings)
    return PromptEmbeddings(Lexicon(table, table), key)
