"""The real CLIP tokenizer (49,408 tokens), rebuilt offline from the merges we ship.

CLIP's vocabulary is derived from its BPE merges (CLIP `simple_tokenizer.py`): the 256 byte
symbols, the same with the end-of-word mark, one token per merge, then the two special
tokens. `configs/clip_merges.txt` holds the merges (MIT, from open_clip_torch).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from importlib import resources
from pathlib import Path

MERGES_RESOURCE = "configs/clip_merges.txt"
VOCAB_SIZE = 49408
MAX_LENGTH = 77


def byte_symbols() -> list[str]:
    """CLIP/GPT-2's byte-level alphabet: one printable character per byte, in vocabulary order
    (CLIP `simple_tokenizer.bytes_to_unicode`)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


def write_clip_tokenizer(folder: Path, pad_token: str) -> Path:
    """Write vocab.json, merges.txt and tokenizer_config.json for `CLIPTokenizer`."""
    folder.mkdir(parents=True, exist_ok=True)
    merges_text = resources.files("loraworks.models").joinpath(MERGES_RESOURCE).read_text("utf-8")
    merges = [line for line in merges_text.splitlines()[1:] if line]
    symbols = byte_symbols()
    tokens = symbols + [s + "</w>" for s in symbols] + ["".join(m.split()) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    if len(tokens) != VOCAB_SIZE:
        raise RuntimeError(f"CLIP vocabulary rebuilt with {len(tokens)} tokens, not {VOCAB_SIZE}")
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
    (folder / "merges.txt").write_text(merges_text)
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": MAX_LENGTH,
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
        "pad_token": pad_token,
        "do_lower_case": True,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return folder


def clip_tokenizer(cache: Path, pad_token: str):
    """A `CLIPTokenizer`, its files written once under `cache`."""
    from transformers import CLIPTokenizer

    folder = cache / ("clip-tokenizer-pad-" + ("eos" if pad_token.startswith("<") else "bang"))
    if not folder.is_dir():
        cache.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".tokenizer-", dir=cache))
        write_clip_tokenizer(tmp, pad_token)
        try:
            tmp.rename(folder)
        except OSError:  # another process wrote it first
            shutil.rmtree(tmp, ignore_errors=True)
    return CLIPTokenizer.from_pretrained(str(folder), local_files_only=True)
