"""The stored form of a model record: the public fields plus bookkeeping, and how a record
is built from a probe and refreshed by a rescan."""

from __future__ import annotations

import json
import sqlite3
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import Field

from loraworks.models.autoimport import Fingerprint
from loraworks.models.metadata import CardFacts
from loraworks.models.probe import Probe
from loraworks.models.records import EDITABLE_FIELDS, ModelRecord

#: columns a probe of a LoRA's file fills, NULL in rows written before the migration that added
#: them (2, 3, 4, 5) until the manager re-probes the file on open (`ModelManager.open`)
REPROBED_COLUMNS = (
    "compatible_bases",
    "layer_kinds",
    "base_evidence",
    "warnings",
    "bundled_embeddings",
)

_JSON_COLUMNS = (
    *REPROBED_COLUMNS,
    "hashes",
    "trigger_words",
    "metadata",
    "user_edits",
)


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


class StoredModel(ModelRecord):
    """A record plus the bookkeeping columns users never see."""

    mtime_ns: int = 0
    user_edits: list[str] = Field(default_factory=list)

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> StoredModel:
        data = dict(row)
        for col in (*REPROBED_COLUMNS, "hashes"):  # a row migrated, not re-read yet
            if data[col] is None:
                del data[col]  # the default (its own base, no kinds…) until the manager does
        for col in _JSON_COLUMNS:
            if col in data:
                data[col] = json.loads(data[col])
        data["in_place"] = bool(data["in_place"])
        return cls.model_validate(data)

    def to_row(self) -> dict[str, Any]:
        data = self.model_dump()
        for col in _JSON_COLUMNS:
            data[col] = json.dumps(data[col])
        data["path"] = str(self.path)
        data["preview_path"] = str(self.preview_path) if self.preview_path else None
        data["in_place"] = int(self.in_place)
        return data

    def public(self) -> ModelRecord:
        return ModelRecord.model_validate(self.model_dump(exclude={"mtime_ns", "user_edits"}))

    @classmethod
    def from_probe(
        cls,
        key: str,
        found: Probe,
        path: Path,
        facts: CardFacts,
        name: str,
        in_place: bool,
        fp: Fingerprint,
    ) -> StoredModel:
        """A new `ok` record (its name is made unique when it is inserted)."""
        stamp = now()
        return cls(
            key=key,
            name=name,
            in_place=in_place,
            created_at=stamp,
            updated_at=stamp,
            **_probed_fields(found, path, facts, fp),
        )

    def refreshed(
        self, found: Probe, path: Path, facts: CardFacts, fp: Fingerprint, name: str
    ) -> StoredModel:
        """This record after a new probe of its file; user-edited fields keep their values."""
        update: dict[str, Any] = {
            "name": name,
            "status": "ok",
            "error": None,
            "updated_at": now(),
            **_probed_fields(found, path, facts, fp),
        }
        for edited in set(self.user_edits) & set(EDITABLE_FIELDS):
            update.pop(edited, None)
        return self.model_copy(update=update)


def _probed_fields(found: Probe, path: Path, facts: CardFacts, fp: Fingerprint) -> dict[str, Any]:
    """What a probe of the file (and its model card) decides: the same for a new record and for
    a rescan's refresh, so that a field the probe gains reaches both."""
    return {
        "type": found.type,
        "base": found.base,
        "compatible_bases": found.compatible_bases,
        "layer_kinds": found.layer_kinds,
        "base_evidence": found.base_evidence,
        "warnings": found.warnings,
        "vectors": found.vectors,
        "bundled_embeddings": found.bundled_embeddings,
        "format": found.format,
        "path": path,
        "source": str(path),
        "hash": found.hash,
        "hashes": found.hashes,
        "size": fp.size,
        "mtime_ns": fp.mtime_ns,
        "fewstep": found.fewstep.family,
        "fewstep_steps": found.fewstep.steps,
        "metadata": facts.metadata,
        "preview_path": facts.preview_path,
        "trigger_words": facts.trigger_words or found.triggers,
        "default_weight": facts.default_weight,
        "description": facts.description,
    }
