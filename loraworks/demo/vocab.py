"""A small CLIP BPE vocabulary of our own, written as files `CLIPTokenizer.from_pretrained` reads.

Used by the demo model (a handful of caption words) and by the test fixtures. Byte-level
symbols come first, then the special tokens at fixed ids, so a text-encoder config can name
`BOS_ID`/`EOS_ID` whatever words are added.
"""

from __future__ import annotations

import json
from pathlib import Path

from loraworks.models.tokenizer import byte_symbols

BOS_TOKEN, EOS_TOKEN = "<|startoftext|>", "<|endoftext|>"
BOS_ID, EOS_ID = 512, 513


def write_tokenizer(folder: Path, words: tuple[str, ...] = ()) -> Path:
    """Write a small CLIP BPE tokenizer (vocab.json + merges.txt) that `from_pretrained` reads.

    Vocabulary: the 256 byte symbols, each also with the end-of-word marker, the two special
    tokens (`BOS_ID`, `EOS_ID`), then ``words`` as whole tokens with the merges that build
    them: a handful of words keeps every id below 1000, so text encoders stay small.
    """
    folder.mkdir(parents=True, exist_ok=True)
    symbols = byte_symbols()
    vocab: dict[str, int] = {}
    for s in [*symbols, *(s + "</w>" for s in symbols), BOS_TOKEN, EOS_TOKEN]:
        vocab.setdefault(s, len(vocab))
    merges: list[str] = []
    for word in words:
        parts = [*word[:-1], word[-1] + "</w>"]
        while len(parts) > 1:
            merged = parts[0] + parts[1]
            if f"{parts[0]} {parts[1]}" not in merges:
                merges.append(f"{parts[0]} {parts[1]}")
            vocab.setdefault(merged, len(vocab))
            parts = [merged, *parts[2:]]
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("".join(f"{m}\n" for m in ["#version: 0.2", *merges]))
    (folder / "tokenizer_config.json").write_text(
        json.dumps({"model_max_length": 77, "tokenizer_class": "CLIPTokenizer"})
    )
    (folder / "special_tokens_map.json").write_text(
        json.dumps(
            {
                "bos_token": BOS_TOKEN,
                "eos_token": EOS_TOKEN,
                "unk_token": EOS_TOKEN,
                "pad_token": EOS_TOKEN,
            }
        )
    )
    return folder
