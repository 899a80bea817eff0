"""Errors of cluster generation. All are `GenerationError`s (so `ValueError`s): the queue
fails the item with the message, the CLI prints one line."""

from __future__ import annotations

from loraworks.generation.errors import GenerationError

EXTRA = "pip install 'loraworks[cluster]'"


class ClusterError(GenerationError):
    """The cluster could not run a job; the message says why and what to change."""


class RayMissing(ClusterError):
    """`--cluster` on an install without Ray."""

    def __init__(self, reason: str):
        super().__init__(
            f"--cluster needs Ray Serve, which is not installed here ({reason}); install the "
            f"'cluster' extra: {EXTRA}"
        )


class FileMismatch(ClusterError):
    """A model file on a worker node whose content is not what the head's record says."""
