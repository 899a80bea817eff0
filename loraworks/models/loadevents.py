"""Progress of a main-model load, one event per component (the UNet alone is most of the
time), so the CLI can draw a bar and the server can forward it instead of a silent wait."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class LoadEvent:
    """Component `index` (0-based) of `total` starts loading: "unet", "vae", "text_encoder",
    "text_encoder_2"."""

    component: str
    index: int
    total: int


LoadProgress = Callable[[LoadEvent], None]


def announced(items: Mapping[str, T], progress: LoadProgress | None) -> Iterator[tuple[str, T]]:
    """`items` in order, telling `progress` of each one before it is handed out."""
    for index, (name, item) in enumerate(items.items()):
        if progress is not None:
            progress(LoadEvent(name, index, len(items)))
        yield name, item
