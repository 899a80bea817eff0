"""The queue's journal: every item written to `databases/queue.json` at each change of state,
so that after a crash or SIGKILL the restarted server still answers for each request — the
ones that were queued or running are marked failed, not forgotten."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from pydantic import ValidationError

from loraworks.server.queue import QueueItem

log = logging.getLogger("loraworks.server")


class QueueJournal:
    def __init__(self, path: Path):
        self.path = path

    def save(self, items: list[QueueItem]) -> None:
        """Replace the journal atomically (a crash mid-write leaves the previous one)."""
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            tmp.write_text(json.dumps([item.model_dump(mode="json") for item in items]))
            os.replace(tmp, self.path)
        except OSError as exc:  # a full disk must not stop the queue
            log.warning("could not write the queue journal %s: %s", self.path, exc)

    def load(self) -> list[QueueItem]:
        """The items of the last run; unreadable entries are skipped with a warning."""
        try:
            entries = json.loads(self.path.read_text())
        except FileNotFoundError:
            return []
        except (OSError, ValueError) as exc:
            log.warning("ignoring the unreadable queue journal %s: %s", self.path, exc)
            return []
        items = []
        for entry in entries if isinstance(entries, list) else []:
            try:
                items.append(QueueItem.model_validate(entry))
            except ValidationError as exc:
                log.warning("dropping a queue journal entry that no longer validates: %s", exc)
        return items
