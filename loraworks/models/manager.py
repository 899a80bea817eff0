"""`ModelManager`: the one object the CLI, generation and server use to reach models."""

from __future__ import annotations

import difflib
import logging
import math
import os
import sqlite3
import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from loraworks.models import autoimport
from loraworks.models.config import Config
from loraworks.models.database import Database, StoredModel, now
from loraworks.models.errors import ModelError, ModelNotFound
from loraworks.models.images import Gallery
from loraworks.models.install import clean_leftovers, copy_into, discard, install_lock
from loraworks.models.metadata import CardFacts, card_facts, sidecar_base
from loraworks.models.names import sanitize_name, unique_name
from loraworks.models.paths import RootPaths, resolve_root
from loraworks.models.probe import Probe, content_hash, probe
from loraworks.models.records import (
    EDITABLE_FIELDS,
    BaseName,
    Duplicate,
    ModelRecord,
    ModelType,
    ScanReport,
)
from loraworks.models.remote import fetch_remote, is_remote

_UNSET: Any = object()
log = logging.getLogger(__name__)


class ModelManager:
    """Records, installs, drop-folder scans and the gallery under one models root."""

    def __init__(self, paths: RootPaths, config: Config, db: Database) -> None:
        self.paths = paths
        self.config = config
        self.db = db
        self.images = Gallery(db, paths.outputs)
        self.last_scan = ScanReport()  # what the scan at `open` found
        self._scan_lock = threading.Lock()

    @classmethod
    def open(cls, root: str | os.PathLike | None = None, scan: bool = True) -> ModelManager:
        """Open (creating if needed) the root: argument > `LORAWORKS_ROOT` > `~/loraworks`.

        Cleans what an interrupted install left behind, then scans the drop folders.
        """
        paths = RootPaths(resolve_root(root))
        paths.create()
        try:
            config = Config.load(paths.config)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(map(str, e['loc']))}: {e['msg'].lower()}" for e in exc.errors()
            )
            raise ModelError(f"{paths.config}: invalid configuration ({problems})") from None
        except (ValueError, OSError) as exc:
            raise ModelError(f"{paths.config}: invalid configuration ({exc})") from None
        mm = cls(paths, config, Database(paths.database))
        mm._clean_interrupted_installs()
        if scan:
            mm.last_scan = mm.scan()
        return mm

    def close(self) -> None:
        self.db.close()

    @property
    def root(self) -> Path:
        return self.paths.root

    # --- reading --------------------------------------------------------------------------

    def list(
        self,
        type: ModelType | None = None,
        base: BaseName | None = None,
        status: str | None = None,
    ) -> list[ModelRecord]:
        clauses, params = [], []
        for column, value in (("type", type), ("base", base), ("status", status)):
            if value is not None:
                clauses.append(f"{column} = ?")
                params.append(value)
        where = ("WHERE " + " AND ".join(clauses)) if clauses else ""
        return [m.public() for m in self.db.models(where, tuple(params))]

    def get(
        self, name_or_key: str, type: ModelType | None = None, base: BaseName | None = None
    ) -> ModelRecord:
        return self._stored(name_or_key, type, base).public()

    def _stored(
        self, name_or_key: str, type: ModelType | None = None, base: BaseName | None = None
    ) -> StoredModel:
        pool = [
            m
            for m in self.db.models()
            if (type is None or m.type == type) and (base is None or m.base == base)
        ]
        by_key = [m for m in pool if m.key == name_or_key]
        if by_key:
            return by_key[0]
        matches = [m for m in pool if m.name.casefold() == name_or_key.casefold()]
        if len(matches) == 1:
            return matches[0]
        what = type or "model"
        if matches:
            kinds = ", ".join(f"{m.type}/{m.base} ({m.key})" for m in matches)
            raise ModelError(f"'{name_or_key}' names several models: {kinds}; give type or base")
        close = close_matches(name_or_key, sorted({m.name for m in pool}))
        hint = f"; did you mean: {', '.join(close)}?" if close else ""
        raise ModelNotFound(f"no {what} named '{name_or_key}'{hint}")

    # --- editing --------------------------------------------------------------------------

    def update(
        self,
        key: str,
        *,
        name: str = _UNSET,
        trigger_words: list[str] = _UNSET,
        default_weight: float | None = _UNSET,
        description: str = _UNSET,
    ) -> ModelRecord:
        """Change user-editable fields; edited fields are kept across rescans."""
        key = self._stored(key).key
        changes: dict[str, Any] = {}
        if trigger_words is not _UNSET:
            changes["trigger_words"] = [w.strip() for w in trigger_words if w.strip()]
        if default_weight is not _UNSET:
            if default_weight is not None and not math.isfinite(float(default_weight)):
                raise ModelError(f"default weight must be a finite number, not {default_weight}")
            changes["default_weight"] = None if default_weight is None else float(default_weight)
        if description is not _UNSET:
            changes["description"] = description.strip()
        with self.db.transaction() as c:
            stored = self.db.model(key)  # re-read: a scan may have changed it meanwhile
            if stored is None:
                raise ModelNotFound(f"model {key} was removed")
            if name is not _UNSET:
                clean = sanitize_name(name)
                taken = self.db.names(stored.type, stored.base) - {stored.name}
                if clean.casefold() in {t.casefold() for t in taken}:
                    raise ModelError(f"a {stored.type} for {stored.base} named '{clean}' exists")
                changes["name"] = clean
            edits = sorted(set(stored.user_edits) | set(changes))
            update = {**changes, "user_edits": edits, "updated_at": now()}
            updated = stored.model_copy(update=update)
            self.db.upsert(c, updated)
        return updated.public()

    def remove(self, key: str, delete_files: bool | None = None) -> ModelRecord:
        """Forget a model. Copies under `models/` are deleted; in-place files are kept unless
        `delete_files`, except drop-folder files, which are deleted so a rescan does not bring
        them back."""
        stored = self._stored(key)
        if delete_files is None:
            delete_files = not stored.in_place or self._in_autoimport(stored.path)
        with self.db.transaction() as c:
            self.db.delete_model(c, stored.key)
        if not stored.in_place:
            discard(self.paths.models, stored.key)
        elif delete_files:
            _delete_path(stored.path)
        return stored.public()

    # --- installing -----------------------------------------------------------------------

    def install(
        self,
        source: str | os.PathLike,
        copy: bool = True,
        name: str | None = None,
        type: ModelType | None = None,
    ) -> ModelRecord:
        """Install a file, folder, URL or Hugging Face repo id; return its record.

        Same content already installed → the existing record is returned unchanged.
        """
        text = str(source)
        if is_remote(text) and not Path(text).expanduser().exists():
            with fetch_remote(text, self.paths.cache) as local:
                return self.install(local, copy=True, name=name or _remote_name(text), type=type)
        path = Path(text).expanduser().resolve()
        found = probe(path, expect=type)
        if type is not None and found.type != type:
            raise ModelError(f"{path.name}: is a {found.type} model, not a {type}")
        existing = self.db.by_hash(found.hash)
        if existing is not None:
            return existing.public()
        facts = card_facts(found.metadata, sidecar_base(found.weights, path))
        key = uuid.uuid4().hex
        stored = self._new_record(key, found, path, facts, name or _stem(path), in_place=not copy)
        if not copy:
            return self._commit_new(stored).public()
        extras = {}
        if facts.preview_path is not None:
            extras["preview" + facts.preview_path.suffix.lower()] = facts.preview_path
        with install_lock(self.paths.install_lock, exclusive=False):
            copied = copy_into(self.paths.models, key, path, sanitize_name(path.name), extras)
            preview = next(iter(extras), None)
            stored = stored.model_copy(
                update={
                    "path": copied,
                    "preview_path": copied.parent / preview if preview else None,
                }
            )
            try:
                stored = self._commit_new(stored)
            except BaseException:
                discard(self.paths.models, key)
                raise
        return stored.public()

    def _commit_new(self, stored: StoredModel) -> StoredModel:
        """Insert a new record, settling its unique name inside the write transaction (another
        process may have taken the name since the record was built)."""
        with self.db.transaction() as c:
            if stored.in_place and (other := self.db.by_path(stored.path)) is not None:
                return other  # another process recorded this file first
            name = unique_name(stored.name, self.db.names(stored.type, stored.base))
            stored = stored.model_copy(update={"name": name})
            self.db.upsert(c, stored)
        return stored

    def _new_record(
        self,
        key: str,
        found: Probe,
        path: Path,
        facts: CardFacts,
        name: str,
        in_place: bool,
    ) -> StoredModel:
        stamp = now()
        fp = autoimport.fingerprint(path)
        return StoredModel(
            key=key,
            name=sanitize_name(name),
            type=found.type,
            base=found.base,
            format=found.format,
            path=path,
            in_place=in_place,
            hash=found.hash,
            size=fp.size,
            mtime_ns=fp.mtime_ns,
            source=str(path),
            trigger_words=facts.trigger_words,
            default_weight=facts.default_weight,
            is_lcm=found.is_lcm,
            description=facts.description,
            metadata=found.metadata,
            preview_path=facts.preview_path,
            created_at=stamp,
            updated_at=stamp,
        )

    def _clean_interrupted_installs(self) -> None:
        with install_lock(self.paths.install_lock, exclusive=True, wait=False) as held:
            if held:
                known = {m.key for m in self.db.models("WHERE in_place = 0")}
                clean_leftovers(self.paths.models, known)

    # --- autoimport -----------------------------------------------------------------------

    def _in_autoimport(self, path: Path) -> bool:
        return path.is_relative_to(self.paths.autoimport)

    def scan(self, full: bool = False) -> ScanReport:
        """Bring records in line with the drop folders (and in-place files).

        Unchanged files (same size and mtime) are skipped unless `full`.
        """
        with self._scan_lock:
            report = ScanReport()
            seen: set[Path] = set()
            folders: tuple[tuple[Path, ModelType], ...] = (
                (self.paths.autoimport_lora, "lora"),
                (self.paths.autoimport_main, "main"),
            )
            skipped = self.db.skipped()
            for folder, kind in folders:
                for path in autoimport.candidates(folder):
                    seen.add(path)
                    self._scan_one(path, kind, full, skipped.get(str(path)), report)
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
            self._record_error(path, kind, fp, None, _reason(exc), stored, report)
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
            self._record_error(path, kind, fp, digest, _reason(exc), stored, report)
            return
        facts = card_facts(found.metadata, sidecar_base(found.weights, path))
        if stored is None:
            record = self._new_record(uuid.uuid4().hex, found, path, facts, _stem(path), True)
            report.added.append(self._commit_new(record).public())
            return
        record = _refreshed(stored, found, path, facts, fp, self.db.names)
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
            "status": "error",
            "error": reason,
            "hash": digest,
            "size": fp.size,
            "mtime_ns": fp.mtime_ns,
            "updated_at": stamp,
        }
        if stored is None:
            record = self._commit_new(
                StoredModel(
                    key=uuid.uuid4().hex,
                    name=sanitize_name(_stem(path)),
                    type=kind,
                    base=None,
                    format="unknown",
                    path=path,
                    in_place=True,
                    source=str(path),
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
                not self._in_autoimport(stored.path) and stored.path.exists()
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

    def watch(
        self,
        stop_event: threading.Event,
        on_scan: Callable[[ScanReport], object] | None = None,
    ) -> None:
        """Rescan whenever the drop folders change, until `stop_event` is set (blocking).

        The server runs it in a thread: ``threading.Thread(target=mm.watch, args=(stop,))``.
        `on_scan(report)` is called after each rescan that changed something.
        """

        def rescan() -> None:
            try:
                report = self.scan()
            except Exception:  # keep watching: the next change triggers another scan
                log.exception("autoimport rescan failed")
                return
            if on_scan is not None and report.changed:
                on_scan(report)

        autoimport.watch(
            [self.paths.autoimport_lora, self.paths.autoimport_main], rescan, stop_event
        )

    # --- loading --------------------------------------------------------------------------

    def load_main(self, record: ModelRecord | str, **kwargs: Any):
        """A diffusers pipeline for a main model, loaded offline."""
        from loraworks.models.loading import load_pipeline

        if isinstance(record, str):
            record = self.get(record, type="main")
        if record.type != "main":
            raise ModelError(f"'{record.name}' is a {record.type}, not a main model")
        if record.status != "ok":
            raise ModelError(f"'{record.name}' cannot be loaded: {record.error or record.status}")
        return load_pipeline(record, self.paths.cache, **kwargs)


def _refreshed(
    stored: StoredModel,
    found: Probe,
    path: Path,
    facts: CardFacts,
    fp: autoimport.Fingerprint,
    names,
) -> StoredModel:
    """`stored` updated from a new probe; user-edited fields keep their values."""
    update: dict[str, Any] = {
        "type": found.type,
        "base": found.base,
        "format": found.format,
        "path": path,
        "source": str(path),
        "hash": found.hash,
        "size": fp.size,
        "mtime_ns": fp.mtime_ns,
        "is_lcm": found.is_lcm,
        "metadata": found.metadata,
        "preview_path": facts.preview_path,
        "status": "ok",
        "error": None,
        "updated_at": now(),
        "trigger_words": facts.trigger_words,
        "default_weight": facts.default_weight,
        "description": facts.description,
    }
    if (stored.type, stored.base) != (found.type, found.base) and "name" not in stored.user_edits:
        update["name"] = unique_name(stored.name, names(found.type, found.base))
    for edited in set(stored.user_edits) & set(EDITABLE_FIELDS):
        update.pop(edited, None)
    return stored.model_copy(update=update)


def close_matches(query: str, names: list[str], limit: int = 5) -> list[str]:
    """Names like `query` (difflib), plus names that contain it or that it contains."""
    folded = {n.casefold(): n for n in names}
    q = query.casefold()
    similar = difflib.get_close_matches(q, list(folded), n=limit, cutoff=0.5)
    overlapping = [f for f in folded if f and (q in f or f in q)]
    return [folded[f] for f in dict.fromkeys(similar + overlapping)][:limit]


def _stem(path: Path) -> str:
    return path.name if path.is_dir() else path.stem


def _remote_name(source: str) -> str:
    return source.rstrip("/").split("/")[-1].split("?")[0].rsplit(".", 1)[0]


def _reason(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


def _delete_path(path: Path) -> None:
    import shutil

    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
