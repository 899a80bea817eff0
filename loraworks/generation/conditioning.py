"""Prompt → UNet conditioning for SD1/SD2 (one CLIP) and SDXL (two CLIPs, pooled embeds and
size ids), computed the way diffusers' pipelines do so our images match theirs.

With guidance the unconditional half comes first in the batch (`[uncond, cond]`); without it
the negative prompt is not encoded at all. Textual-inversion embeddings named in either prompt
(`PromptEmbeddings`) take the token slots of their trigger: their vectors are written over the
encoder's input embeddings for that call only (`loraworks.embeddings.injected`).
"""

from __future__ import annotations

import re
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import torch

from loraworks.embeddings import PLACEHOLDER_ID, Embedding, Encoder, Lexicon, encoder_of, injected
from loraworks.generation.emphasis import has_emphasis, parse_emphasis
from loraworks.generation.placement import placement


@dataclass
class Conditioning:
    embeds: torch.Tensor  # [1 or 2, tokens, dim]
    added: dict[str, torch.Tensor] | None  # SDXL `added_cond_kwargs`, batched like `embeds`


@dataclass(frozen=True)
class PromptEmbeddings:
    """The embeddings a request's prompts may use (by trigger and name), and what identifies
    them for the conditioning cache: each one's name and content hash."""

    lexicon: Lexicon[Embedding]
    key: tuple[tuple[str, str | None], ...]


def is_sdxl(pipe: Any) -> bool:
    return getattr(pipe, "text_encoder_2", None) is not None


def _tokens(tokenizer: Any, text: str, length: int) -> torch.Tensor:
    return tokenizer(
        text, padding="max_length", max_length=length, truncation=True, return_tensors="pt"
    ).input_ids


#: token ids [1, 77]; a weight per token or None; embedding vectors by position in the row
Row = tuple[torch.Tensor, torch.Tensor | None, dict[int, torch.Tensor]]


_BREAK = re.compile(r"\s*\bBREAK\b\s*")


def _rows(
    tokenizer: Any,
    text: str,
    words: Lexicon[Embedding] | None = None,
    encoder: Encoder | None = None,
) -> list[Row]:
    """`text` as CLIP rows of 77: each holds up to 75 text tokens between its start and end
    tokens, padded as the tokenizer pads; weights only where `text` has emphasis. `BREAK`
    (A1111) starts a new row. A prompt of one row without emphasis or embeddings is the
    tokenizer's own output, exactly (diffusers' path). An embedding of `words` takes one slot
    per vector (for `encoder`; none where it has no vectors for it: an SD1 embedding on SDXL's
    CLIP-G), weighted as its text is, and splits across rows as the words it stands for would."""
    parts = _BREAK.split(text)
    if len(parts) > 1:
        return [row for part in parts for row in _rows(tokenizer, part, words, encoder)]
    length = tokenizer.model_max_length
    body = length - 2
    emphasis = has_emphasis(text)
    fragments = parse_emphasis(text) if emphasis else [(text, 1.0)]
    pieces = [(p, w) for f, w in fragments for p in (words.split(f) if words else [f])]
    ids: list[int] = []
    weights: list[float] = []
    vectors: list[torch.Tensor | None] = []
    if not emphasis and all(isinstance(p, str) for p, _ in pieces):
        ids = tokenizer(text, add_special_tokens=False).input_ids
        if len(ids) <= body:
            return [(_tokens(tokenizer, text, length), None, {})]
        vectors = [None] * len(ids)
    else:
        for piece, weight in pieces:
            if isinstance(piece, str):
                piece_ids = tokenizer(piece, add_special_tokens=False).input_ids
                piece_vectors: list[torch.Tensor | None] = [None] * len(piece_ids)
            else:
                rows = piece.vectors.get(encoder) if encoder is not None else None
                piece_vectors = list(rows) if rows is not None else []
                piece_ids = [PLACEHOLDER_ID] * len(piece_vectors)
            ids += piece_ids
            vectors += piece_vectors
            weights += [weight] * len(piece_ids)
    rows_out: list[Row] = []
    comma = _comma_id(tokenizer) if len(ids) > body else None  # only a full row backtracks
    plain = [-1 if v is not None else i for i, v in zip(ids, vectors, strict=True)]
    for first, last in _row_spans(plain, body, comma):
        pad = body - (last - first)
        row = [tokenizer.bos_token_id, *ids[first:last], tokenizer.eos_token_id]
        row += [tokenizer.pad_token_id] * pad
        w = None
        if emphasis:
            w = torch.tensor([1.0, *weights[first:last], 1.0, *[1.0] * pad])
        slots = {1 + k - first: v for k in range(first, last) if (v := vectors[k]) is not None}
        rows_out.append((torch.tensor([row]), w, slots))
    return rows_out


COMMA_BACKTRACK = 20  # A1111's `comma_padding_backtrack` default


def _comma_id(tokenizer: Any) -> int | None:
    ids = tokenizer(",", add_special_tokens=False).input_ids
    return ids[0] if len(ids) == 1 else None


def _row_spans(ids: list[int], body: int, comma: int | None) -> list[tuple[int, int]]:
    """[first, last) of each row: `body` tokens, except that a full row followed by more text
    ends after its last comma when that comma is within the last 20 tokens (A1111), so that a
    phrase is not split across rows."""
    spans: list[tuple[int, int]] = []
    first = 0
    while True:
        last = min(first + body, len(ids))
        if last - first == body and last < len(ids) and comma is not None:
            commas = [k for k in range(first, last) if ids[k] == comma]
            if commas and last - commas[-1] <= COMMA_BACKTRACK:
                last = commas[-1] + 1
        spans.append((first, last))
        if last >= len(ids):
            return spans
        first = last


def _emphasised(hidden: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    """A1111's "Original" emphasis: each token's state × its weight, then the whole rescaled
    to its former mean."""
    if weights is None:
        return hidden
    before = hidden.float().mean()
    scaled = hidden.float() * weights.to(hidden.device)[None, :, None]
    return (scaled * (before / scaled.mean())).to(hidden.dtype)


def _padded(rows: list[Row], count: int, tokenizer: Any) -> list[Row]:
    """`rows` filled up to `count` with rows of the empty prompt (as A1111 pads the shorter of
    cond and uncond, so that both batch together)."""
    empty = _rows(tokenizer, "")[0]
    return rows + [empty] * (count - len(rows))


def _tokenizers(pipe: Any) -> list[Any]:
    return [pipe.tokenizer, pipe.tokenizer_2] if is_sdxl(pipe) else [pipe.tokenizer]


def _encoders(pipe: Any) -> list[Any]:
    return [pipe.text_encoder, pipe.text_encoder_2] if is_sdxl(pipe) else [pipe.text_encoder]


def _run(te: Any, ids: torch.Tensor, slots: dict[int, torch.Tensor], **kwargs: Any) -> Any:
    """One encoder call on one row, its embedding vectors in place."""
    with injected(te, list(slots), list(slots.values())):
        return te(ids.to(placement(te)[0]), **kwargs)


@torch.no_grad()
def _encode_sd(pipe: Any, rows: list[Row]) -> torch.Tensor:
    te = pipe.text_encoder
    return torch.cat([_emphasised(_run(te, ids, slots)[0], w) for ids, w, slots in rows], dim=1)


@torch.no_grad()
def _encode_sdxl(pipe: Any, rows: list[list[Row]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Both encoders' penultimate states side by side (`rows`: each encoder's, of one
    length), and the pooled embedding of the first row (the start of the prompt, as A1111
    keeps it)."""
    hidden, pooled = [], None
    for te, text_rows in zip((pipe.text_encoder, pipe.text_encoder_2), rows, strict=True):
        states = []
        for ids, weights, slots in text_rows:
            out = _run(te, ids, slots, output_hidden_states=True)
            if out[0].ndim == 2 and pooled is None:  # CLIPTextModelWithProjection: text_embeds
                pooled = out[0]  # not emphasised, as in A1111
            states.append(_emphasised(out.hidden_states[-2], weights))
        hidden.append(torch.cat(states, dim=1))
    assert pooled is not None, "SDXL text_encoder_2 must be a CLIPTextModelWithProjection"
    return torch.cat(hidden, dim=-1), pooled


def encode_prompt(
    pipe: Any,
    prompt: str,
    negative: str | None,
    guided: bool,
    width: int,
    height: int,
    embeddings: PromptEmbeddings | None = None,
) -> Conditioning:
    """Conditioning for one image. A prompt longer than CLIP's 75 text tokens is encoded in
    rows of 77 placed side by side (A1111, ComfyUI); every text and encoder is padded with
    empty rows to the longest, so that prompt and negative batch together. SDXL with no
    negative prompt uses zeros for the unconditional embeds, as diffusers does
    (`force_zeros_for_empty_prompt`). `embeddings`: those the prompts may name."""
    device, dtype = placement(pipe.unet)
    tokenizers = _tokenizers(pipe)
    encoders = [encoder_of(te) for te in _encoders(pipe)]
    words = embeddings.lexicon if embeddings is not None else None
    texts = [prompt, negative or ""] if guided else [prompt]
    rows = [  # [text][encoder]
        [_rows(t, text, words, e) for t, e in zip(tokenizers, encoders, strict=True)]
        for text in texts
    ]
    count = max(len(r) for per_text in rows for r in per_text)
    rows = [[_padded(r, count, t) for r, t in zip(per, tokenizers, strict=True)] for per in rows]
    if not is_sdxl(pipe):
        embeds = _encode_sd(pipe, rows[0][0])
        if guided:
            embeds = torch.cat([_encode_sd(pipe, rows[1][0]), embeds])
        return Conditioning(embeds.to(device, dtype), None)

    embeds, pooled = _encode_sdxl(pipe, rows[0])
    if guided:
        zeros = not negative and pipe.config.get("force_zeros_for_empty_prompt", True)
        if zeros:
            neg_embeds, neg_pooled = torch.zeros_like(embeds), torch.zeros_like(pooled)
        else:
            neg_embeds, neg_pooled = _encode_sdxl(pipe, rows[1])
        embeds = torch.cat([neg_embeds, embeds])
        pooled = torch.cat([neg_pooled, pooled])
    time_ids = torch.tensor([[height, width, 0, 0, height, width]], dtype=dtype)
    added = {
        "text_embeds": pooled.to(device, dtype),
        "time_ids": time_ids.repeat(embeds.shape[0], 1).to(device),
    }
    return Conditioning(embeds.to(device, dtype), added)


class ConditioningCache:
    """Encoded prompts of one loaded model, reused while its LoRA patch stays the same.

    A batch (seeds S…S+N−1) shares one prompt, and users re-run a prompt with new seeds or
    other sampler settings: like A1111's cached conds, the text encoders then run once. The
    embeddings depend on the text-encoder weights, so `sync(patch)` empties the cache whenever
    the model carries a different patch (any `LoRAPatcher.set` that re-patched, or a restore);
    and on the textual-inversion embeddings the prompts may use (their names and hashes are
    part of the key: a trigger re-pointed at another file encodes afresh).
    """

    def __init__(self, size: int = 16) -> None:
        self.size = size
        self._items: OrderedDict[tuple, Conditioning] = OrderedDict()
        self._patch: object = None

    def sync(self, patch: object) -> None:
        if patch is not self._patch:
            self._items.clear()
            self._patch = patch

    def encode(
        self,
        pipe: Any,
        prompt: str,
        negative: str | None,
        guided: bool,
        width: int,
        height: int,
        embeddings: PromptEmbeddings | None = None,
    ) -> Conditioning:
        used = embeddings.key if embeddings is not None else ()
        key = (prompt, negative, guided, width, height, used)
        hit = self._items.get(key)
        if hit is None:
            hit = encode_prompt(pipe, prompt, negative, guided, width, height, embeddings)
            self._items[key] = hit
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        self._items.move_to_end(key)
        return hit
