"""Textual-inversion embeddings: every common file layout read into one `Embedding` (vectors per
text encoder, base from their widths), prompt triggers, and injection into an encoder call."""

from .errors import (
    EmbeddingBaseMismatch,
    EmbeddingError,
    EmbeddingFileError,
    EmbeddingNotFound,
    EmbeddingShapeError,
    EmbeddingValueError,
    TooManyEmbeddings,
)
from .formats import convert, flatten, is_bundle_format, is_embedding
from .inject import PLACEHOLDER_ID, check_fits, encoder_of, injected
from .model import ENCODER_WIDTHS, Embedding, Encoder, base_label, make_embedding
from .read import default_name, read_bundled, read_embedding, read_tensors
from .triggers import PREFIX, Lexicon

__all__ = [
    "ENCODER_WIDTHS",
    "PLACEHOLDER_ID",
    "PREFIX",
    "Embedding",
    "EmbeddingBaseMismatch",
    "EmbeddingError",
    "EmbeddingFileError",
    "EmbeddingNotFound",
    "EmbeddingShapeError",
    "EmbeddingValueError",
    "Encoder",
    "Lexicon",
    "TooManyEmbeddings",
    "base_label",
    "check_fits",
    "convert",
    "default_name",
    "encoder_of",
    "flatten",
    "injected",
    "is_bundle_format",
    "is_embedding",
    "make_embedding",
    "read_bundled",
    "read_embedding",
    "read_tensors",
]
