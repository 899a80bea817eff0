"""Bringing records in line with the drop folders: new files are probed and recorded, known
ones skipped by size+mtime, duplicates reported, vanished ones marked `missing`, unusable ones
recorded as `error` with the reason. Each file is scanned in isolation: whatever goes wrong with
one (even an error no check foresaw) is that file's error record, never a failed scan, so the
server and `models list` still start and the other files are still imported."""

from __future__ import annotations

import logging
import sqlite3
import threading
import uuid
from pathlib import Path

from loraworks.models import autoimport
from loraworks.models.database import Database
from loraworks.models.errors import ModelError
from loraworks.models.metadata import card_facts, sidecar_base
from loraworks.models.names import sanitize_name, unique_name
from loraworks.models.paths import RootPaths
from loraworks.models.probe import content_hash, probe
from loraworks.models.records import Duplicate, ModelType, ScanReport
from loraworks.models.stored import StoredModel, now

log = logging.getLogger(__name__)


def stem(path: Path) -> str:
    """The model's own name part: a folder's name, a file's name without suffix."""
    return path.name if path.is_dir() else path.stem


def reason(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


class Scanner:
    """One per manager; scans are serialised (the server's watcher and requests share it)."""

    def __init__(self, db: Database, paths: RootPaths, kept_bytes: int) -> None:
        self.db = db
        self.paths = paths
        self.kept_bytes = kept_bytes  # header metadata a record keeps
        self._lock = threading.Lock()

    def scan(self, full: bool = False) -> ScanReport:
        """Bring records in line with the drop folders (and in-place files).

        Unchanged files (same size and mtime) are skipped unless `full`.
        """
        with self._lock:
            report = ScanReport()
            seen: set[Path] = set()
            folders: tuple[tuple[Path, ModelType], ...] = (
                (self.paths.autoimport_lora, "lora"),
                (self.paths.autoimport_main, "main"),
                (self.paths.autoimport_embedding, "embedding"),
            )
            skipped = self.db.skipped()
            for folder, kind in folders:
                for path in autoimport.candidates(folder):
                    seen.add(path)
                    try:
                        self._scan_one(path, kind, full, skipped.get(str(path)), report)
                    except Exception as exc:
                        log.exception("autoimport: %s could not be scanned", path)
                        self._record_unforeseen(path, kind, exc, report)
            self._mark_missing(seen, report)
            return report

    def _scan_one(
        self,
        path: Path,
        kind: ModelType,
        full: bool,
        skipped: sqlite3.Row | None,
        report: ScanReport,
    ) -> None:
        try:
            fp = autoimport.fingerprint(path)
        except OSError:
            return  # vanished while scanning; the next scan sees it gone
        stored = self.db.by_path(path)
        if not full and self._unchanged(stored, skipped, fp):
            report.unchanged += 1
            return
        with self.db.transaction() as c:
            c.execute("DELETE FROM skipped_files WHERE path = ?", (str(path),))
        try:
            digest = content_hash(path)
        except (OSError, ModelError) as exc:
            self._record_error(path, kind, fp, None, reason(exc), stored, report)
            return
        twin = self.db.by_hash(digest)
        if twin is not None and twin.in_place and not twin.path.exists() and stored is None:
            stored, twin = twin, None  # moved or renamed since the last scan
        if twin is not None and twin.path != path:
            if stored is not None:
                with self.db.transaction() as c:
                    self.db.delete_model(c, stored.key)
            with self.db.transaction() as c:
                c.execute(
                    "INSERT OR REPLACE INTO skipped_files VALUES (?, ?, ?, ?)",
                    (str(path), fp.size, fp.mtime_ns, twin.key),
                )
            report.duplicates.append(Duplicate(path, twin.key, twin.name))
            return
        if stored is None:
            stored = self._moved_record(digest)
        try:
            found = probe(path, expect=kind)
        except ModelError as exc:
            self._record_error(path, kind, fp, digest, reason(exc), stored, report)
            return
        facts = card_facts(found.metadata, sidecar_base(found.weights, path), self.kept_bytes)
        if stored is None:
            new = StoredModel.from_probe(
                uuid.uuid4().hex, found, path, facts, sanitize_name(stem(path)), True, fp
            )
            report.added.append(self.db.insert_new(new).public())
            return
        name = stored.name
        if (stored.type, stored.base) != (found.type, found.base):
            name = unique_name(stored.name, self.db.names(found.type, found.base))
        record = stored.refreshed(found, path, facts, fp, name)
        with self.db.transaction() as c:
            self.db.upsert(c, record)
        report.updated.append(record.public())

    def _unchanged(
        self,
        stored: StoredModel | None,
        skipped: sqlite3.Row | None,
        fp: autoimport.Fingerprint,
    ) -> bool:
        """Same size and mtime as when last recorded (or skipped as a duplicate of a model
        that is still there): nothing to re-hash."""
        if stored is not None and stored.status != "missing":
            return (stored.size, stored.mtime_ns) == (fp.size, fp.mtime_ns)
        if skipped is not None and (skipped["size"], skipped["mtime_ns"]) == (
            fp.size,
            fp.mtime_ns,
        ):
            original = self.db.model(skipped["duplicate_of"])
            return original is not None and original.status != "missing"
        return False

    def _moved_record(self, digest: str) -> StoredModel | None:
        """A `missing` drop-folder record with this content: the file was moved or renamed."""
        for m in self.db.models("WHERE hash = ? AND status = 'missing'", (digest,)):
            if m.in_place:
                return m
        return None

    def _record_unforeseen(
        self, path: Path, kind: ModelType, exc: Exception, report: ScanReport
    ) -> None:
        """An error record for a file whose scan failed in a way no check foresaw."""
        try:
            fp = autoimport.fingerprint(path)
        except OSError:
            return  # vanished meanwhile
        why = f"could not be read ({type(exc).__name__}: {reason(exc)})"
        self._record_error(path, kind, fp, None, why, self.db.by_path(path), report)

    def _record_error(
        self,
        path: Path,
        kind: ModelType,
        fp: autoimport.Fingerprint,
        digest: str | None,
        reason: str,
        stored: StoredModel | None,
        report: ScanReport,
    ) -> None:
        """Record (or mark) an unusable drop-folder file with the reason, shown in listings."""
        stamp = now()
        facts = {
            "path": path,  # also when `stored` is a moved record: it lives here now
            "source": str(path),
            "status": "error",
            "error": reason,
            "hash": digest,
            "size": fp.size,
            "mtime_ns": fp.mtime_ns,
            "updated_at": stamp,
        }
        if stored is None:
            record = self.db.insert_new(
                StoredModel(
                    key=uuid.uuid4().hex,
                    name=sanitize_name(stem(path)),
                    type=kind,
                    base=None,
                    format="unknown",
                    in_place=True,
                    created_at=stamp,
                    **facts,
                )
            )
        else:
            record = stored.model_copy(update=facts)
            with self.db.transaction() as c:
                self.db.upsert(c, record)
        report.errors.append(record.public())

    def _mark_missing(self, seen: set[Path], report: ScanReport) -> None:
        for stored in self.db.models("WHERE in_place = 1 AND status != 'missing'"):
            if stored.path in seen or (
                not self.paths.in_autoimport(stored.path) and stored.path.exists()
            ):
                continue
            record = stored.model_copy(
                update={"status": "missing", "error": "file not found", "updated_at": now()}
            )
            with self.db.transaction() as c:
                self.db.upsert(c, record)
            report.missing.append(record.public())
        with self.db.transaction() as c:
            for path in self.db.skipped():
                if not Path(path).exists():
                    c.execute("DELETE FROM skipped_files WHERE path = ?", (path,))
