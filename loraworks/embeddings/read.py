"""Reading embedding files through the engine's one weight-file reader (`lora/files.py`):
safetensors headers checked against the file, pickles only with ``weights_only``."""

from __future__ import annotations

import os
from pathlib import Path

from loraworks.lora.errors import WeightFileError
from loraworks.lora.files import is_pickle, load_pickle, read_weights

from .errors import EmbeddingFileError
from .formats import Tensors, convert, flatten, from_bundle
from .model import Embedding

#: diffusers' file name for a trained concept: the folder names the concept instead
DIFFUSERS_FILE_STEM = "learned_embeds"


def default_name(path: Path) -> str:
    """The file name without suffix (a diffusers `learned_embeds` file: its folder's name)."""
    return path.parent.name if path.stem == DIFFUSERS_FILE_STEM else path.stem


def read_tensors(path: str | os.PathLike) -> Tensors:
    """A file's tensors, a pickle's nested dicts flattened to dotted keys."""
    path = Path(path)
    try:
        if is_pickle(path):
            return flatten(load_pickle(path))
        return read_weights(path).tensors
    except WeightFileError as exc:
        raise EmbeddingFileError(str(exc), exc.unsafe) from None
    except OSError as exc:
        raise EmbeddingFileError(f"{path.name}: cannot be read ({exc})") from None


def read_embedding(path: str | os.PathLike, name: str | None = None) -> Embedding:
    path = Path(path)
    return convert(read_tensors(path), name or default_name(path))


def read_bundled(path: str | os.PathLike) -> list[Embedding]:
    """The embeddings a LoRA file carries (`bundle_emb.*`), none when it carries none."""
    return from_bundle(read_tensors(path))
