"""Errors about textual-inversion embeddings. All are `ValueError`s (bad input), so the CLI and
the server print one line naming the file or the prompt word instead of a traceback."""

from __future__ import annotations


class EmbeddingError(ValueError):
    """An embedding file or use that cannot work; the message says why and what to do."""


class EmbeddingFileError(EmbeddingError):
    """A file that is not a readable embedding: truncated, unknown layout, or a pickle that is
    not plain tensors (`unsafe`: refused without running it)."""

    def __init__(self, message: str, unsafe: bool = False):
        super().__init__(message)
        self.unsafe = unsafe


class EmbeddingShapeError(EmbeddingError):
    """Vectors that fit no text encoder: none at all, a width no encoder has, SDXL halves of
    different lengths."""


class EmbeddingValueError(EmbeddingError):
    """Vectors holding NaN or infinity (a diverged training run)."""


class EmbeddingBaseMismatch(EmbeddingError):
    """An embedding used with a main model whose encoders it does not fit; names both bases."""


class EmbeddingNotFound(EmbeddingError):
    """`embedding:name` in a prompt that names no installed embedding."""


class TooManyEmbeddings(EmbeddingError):
    """More embedding uses in one prompt than `MAX_USES`."""
