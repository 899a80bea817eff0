"""The drop folders: finding model files in them and watching them for changes.

Subfolders and symlinks are followed (each real folder once, so link loops end). A folder
that is itself a model (diffusers LoRA, PEFT adapter, diffusers pipeline) is one candidate
and is not descended into. Sidecars (.json, .txt, images) are not candidates.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from loraworks.models.probe import is_lora_folder, is_main_folder, is_weight_file


@dataclass(frozen=True)
class Fingerprint:
    """Size and newest mtime: unchanged fingerprints are not re-hashed."""

    size: int
    mtime_ns: int


def fingerprint(path: Path) -> Fingerprint:
    if path.is_dir():
        files = [p for p in path.rglob("*") if p.is_file()]
        stats = [p.stat() for p in files]
        return Fingerprint(
            size=sum(s.st_size for s in stats),
            mtime_ns=max((s.st_mtime_ns for s in stats), default=0),
        )
    st = path.stat()
    return Fingerprint(size=st.st_size, mtime_ns=st.st_mtime_ns)


def candidates(folder: Path) -> Iterator[Path]:
    """Model files and model folders under `folder`, following links, each real one once."""
    seen: set[Path] = set()
    stack = [folder]
    while stack:
        current = stack.pop()
        try:
            real = current.resolve(strict=True)
        except (OSError, RuntimeError):
            continue
        if real in seen:
            continue
        seen.add(real)
        try:
            entries = sorted(current.iterdir())
        except OSError:
            continue
        for entry in entries:
            if entry.name.startswith("."):
                continue
            if entry.is_dir():
                if is_lora_folder(entry) or is_main_folder(entry):
                    yield entry
                else:
                    stack.append(entry)
            elif is_weight_file(entry):
                yield entry


def watch(
    folders: list[Path],
    on_change: Callable[[], object],
    stop_event: threading.Event,
    debounce_ms: int = 800,
) -> None:
    """Call `on_change()` after each burst of file changes in `folders`, until `stop_event`.

    Blocking; run it in a thread. `LORAWORKS_WATCH_POLL=1` forces polling (network shares,
    some containers).
    """
    from watchfiles import watch as watch_changes

    polling = os.environ.get("LORAWORKS_WATCH_POLL") == "1"
    for _changes in watch_changes(
        *folders,
        stop_event=stop_event,
        debounce=debounce_ms,
        force_polling=polling or None,
        yield_on_timeout=False,
        raise_interrupt=False,
    ):
        on_change()
