"""Errors a user can cause through the model manager; each message is meant to be read."""

from __future__ import annotations


class ModelError(ValueError):
    """Base class: a model, file or request the manager refuses, with the reason."""


class ModelNotFound(ModelError, LookupError):
    """No record matches a name or key; the message lists close matches."""


class UnsafeFileError(ModelError):
    """A file we will not read: a pickle that needs code execution, an oversized header, …"""


class ImageNotFound(ModelNotFound):
    """No gallery image has this id."""
