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
from .formats import Shapes, convert, flatten, is_bundle_format, is_embedding
from .inject import PLACEHOLDER_ID, check_fits, encoder_of, injected
from .model import (
    ENCODER_WIDTHS,
    Embedding,
    Encoder,
    base_label,
    compatible_bases,
    make_embedding,
)
from .read import default_name, read_bundled, read_embedding, read_tensors
from .triggers import MAX_USES, PREFIX, Lexicon

__all__ = [
    "ENCODER_WIDTHS",
    "MAX_USES",
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
    "Shapes",
    "TooManyEmbeddings",
    "base_label",
    "check_fits",
    "compatible_bases",
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
