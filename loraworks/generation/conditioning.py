"""Prompt → UNet conditioning for SD1/SD2 (one CLIP) and SDXL (two CLIPs, pooled embeds and
size ids), computed the way diffusers' pipelines do so our images match theirs.

With guidance the unconditional half comes first in the batch (`[uncond, cond]`); without it
the negative prompt is not encoded at all.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import torch

from loraworks.generation.emphasis import has_emphasis, parse_emphasis
from loraworks.generation.placement import placement


@dataclass
class Conditioning:
    embeds: torch.Tensor  # [1 or 2, tokens, dim]
    added: dict[str, torch.Tensor] | None  # SDXL `added_cond_kwargs`, batched like `embeds`
    truncated: list[str] = field(default_factory=list)  # prompt text CLIP could not see


def is_sdxl(pipe: Any) -> bool:
    return getattr(pipe, "text_encoder_2", None) is not None


def _tokens(tokenizer: Any, text: str, length: int) -> torch.Tensor:
    return tokenizer(
        text, padding="max_length", max_length=length, truncation=True, return_tensors="pt"
    ).input_ids


def _truncated_text(tokenizer: Any, text: str) -> str | None:
    ids = tokenizer(text, return_tensors="pt").input_ids[0]
    limit = tokenizer.model_max_length
    if len(ids) <= limit:
        return None
    return tokenizer.decode(ids[limit - 1 : -1])


def _weighted_tokens(tokenizer: Any, text: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Token ids [1, max_length] as the tokenizer pads them, and a weight per token (None when
    `text` has no emphasis: then the ids are the tokenizer's own, exactly)."""
    length = tokenizer.model_max_length
    if not has_emphasis(text):
        return _tokens(tokenizer, text, length), None
    ids: list[int] = []
    weights: list[float] = []
    for fragment, weight in parse_emphasis(text):
        piece = tokenizer(fragment, add_special_tokens=False).input_ids
        ids += piece
        weights += [weight] * len(piece)
    ids, weights = ids[: length - 2], weights[: length - 2]
    pad = length - 2 - len(ids)
    full = [tokenizer.bos_token_id, *ids, tokenizer.eos_token_id, *[tokenizer.pad_token_id] * pad]
    return torch.tensor([full]), torch.tensor([1.0, *weights, 1.0, *[1.0] * pad])


def _emphasised(hidden: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    """A1111's "Original" emphasis: each token's state × its weight, then the whole rescaled
    to its former mean."""
    if weights is None:
        return hidden
    before = hidden.float().mean()
    scaled = hidden.float() * weights.to(hidden.device)[None, :, None]
    return (scaled * (before / scaled.mean())).to(hidden.dtype)


@torch.no_grad()
def _encode_sd(pipe: Any, text: str) -> torch.Tensor:
    te = pipe.text_encoder
    ids, weights = _weighted_tokens(pipe.tokenizer, text)
    return _emphasised(te(ids.to(placement(te)[0]))[0], weights)


@torch.no_grad()
def _encode_sdxl(pipe: Any, text: str) -> tuple[torch.Tensor, torch.Tensor]:
    hidden, pooled = [], None
    for tokenizer, te in (
        (pipe.tokenizer, pipe.text_encoder),
        (pipe.tokenizer_2, pipe.text_encoder_2),
    ):
        ids, weights = _weighted_tokens(tokenizer, text)
        out = te(ids.to(placement(te)[0]), output_hidden_states=True)
        if out[0].ndim == 2:  # CLIPTextModelWithProjection: text_embeds come first
            pooled = out[0]  # not emphasised, as in A1111
        hidden.append(_emphasised(out.hidden_states[-2], weights))
    assert pooled is not None, "SDXL text_encoder_2 must be a CLIPTextModelWithProjection"
    return torch.cat(hidden, dim=-1), pooled


def encode_prompt(
    pipe: Any, prompt: str, negative: str | None, guided: bool, width: int, height: int
) -> Conditioning:
    """Conditioning for one image. SDXL with no negative prompt uses zeros for the
    unconditional embeds, as diffusers does (`force_zeros_for_empty_prompt`)."""
    device, dtype = placement(pipe.unet)
    seen = "".join(fragment for fragment, _ in parse_emphasis(prompt))  # what CLIP reads
    truncated = [t for t in [_truncated_text(pipe.tokenizer, seen)] if t]
    if not is_sdxl(pipe):
        embeds = _encode_sd(pipe, prompt)
        if guided:
            embeds = torch.cat([_encode_sd(pipe, negative or ""), embeds])
        return Conditioning(embeds.to(device, dtype), None, truncated)

    embeds, pooled = _encode_sdxl(pipe, prompt)
    if guided:
        zeros = not negative and pipe.config.get("force_zeros_for_empty_prompt", True)
        if zeros:
            neg_embeds, neg_pooled = torch.zeros_like(embeds), torch.zeros_like(pooled)
        else:
            neg_embeds, neg_pooled = _encode_sdxl(pipe, negative or "")
        embeds = torch.cat([neg_embeds, embeds])
        pooled = torch.cat([neg_pooled, pooled])
    time_ids = torch.tensor([[height, width, 0, 0, height, width]], dtype=dtype)
    added = {
        "text_embeds": pooled.to(device, dtype),
        "time_ids": time_ids.repeat(embeds.shape[0], 1).to(device),
    }
    return Conditioning(embeds.to(device, dtype), added, truncated)


class ConditioningCache:
    """Encoded prompts of one loaded model, reused while its LoRA patch stays the same.

    A batch (seeds S…S+N−1) shares one prompt, and users re-run a prompt with new seeds or
    other sampler settings: like A1111's cached conds, the text encoders then run once. The
    embeddings depend on the text-encoder weights, so `sync(patch)` empties the cache whenever
    the model carries a different patch (any `LoRAPatcher.set` that re-patched, or a restore).
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
        self, pipe: Any, prompt: str, negative: str | None, guided: bool, width: int, height: int
    ) -> Conditioning:
        key = (prompt, negative, guided, width, height)
        hit = self._items.get(key)
        if hit is None:
            hit = encode_prompt(pipe, prompt, negative, guided, width, height)
            self._items[key] = hit
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        self._items.move_to_end(key)
        return hit
