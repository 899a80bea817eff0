"""The engine's weight-file reader (`loraworks.lora.files`), with its refusals as the model
manager's errors: an unsafe file (a pickle that is not plain weights, an absurd header) is an
`UnsafeFileError`, any other unreadable file a `ModelError`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from loraworks.lora import Header, WeightFile, WeightFileError
from loraworks.lora import read_header as _read_header
from loraworks.lora import read_weights as _read_weights
from loraworks.models.errors import ModelError, UnsafeFileError


@contextmanager
def model_errors() -> Iterator[None]:
    """Re-raise the reader's refusals as the manager's errors."""
    try:
        yield
    except WeightFileError as exc:
        raise (UnsafeFileError if exc.unsafe else ModelError)(str(exc)) from None


def read_header(path: Path) -> Header:
    """A safetensors header, checked and parsed once, without loading tensors."""
    with model_errors():
        return _read_header(path)


def read_weights(path: Path, header: Header | None = None) -> WeightFile:
    """All tensors of a weight file; pickles only through the weights-only unpickler."""
    with model_errors():
        return _read_weights(path, header)
