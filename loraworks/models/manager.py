"""`ModelManager`: the one object the CLI, generation and server use to reach models."""

from __future__ import annotations

import difflib
import logging
import math
import os
import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from loraworks.models import autoimport
from loraworks.models.config import Config
from loraworks.models.database import Database
from loraworks.models.errors import ModelError, ModelNotFound
from loraworks.models.fewstep import FEWSTEP_FAMILIES
from loraworks.models.guard import InstallGuard
from loraworks.models.images import Gallery
from loraworks.models.install import clean_leftovers, copy_into, discard, install_lock
from loraworks.models.metadata import card_facts, sidecar_base
from loraworks.models.names import sanitize_name
from loraworks.models.paths import RootPaths, resolve_root
from loraworks.models.probe import content_hashes, probe, single_file
from loraworks.models.progress import ByteCounter, ProgressCallback
from loraworks.models.records import (
    BaseName,
    ModelRecord,
    ModelType,
    ScanReport,
)
from loraworks.models.remote import fetch_remote, is_remote
from loraworks.models.scanning import Scanner, stem
from loraworks.models.stored import REPROBED_COLUMNS, StoredModel, now

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
        self._scanner = Scanner(db, paths, config.limits.metadata_kept_kb * 1024)

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
        mm._finish_lora_migrations()
        mm._finish_hash_migration()
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
        """Records of `type` and `status` that fit a main model of `base` (a CLIP-L-only LoRA
        probed as sdxl is listed for sd1 too)."""
        clauses, params = [], []
        for column, value in (("type", type), ("status", status)):
            if value is not None:
                clauses.append(f"{column} = ?")
                params.append(value)
        where = ("WHERE " + " AND ".join(clauses)) if clauses else ""
        stored = self.db.models(where, tuple(params))
        return [m.public() for m in stored if base is None or m.fits(base)]

    def get(
        self, name_or_key: str, type: ModelType | None = None, base: BaseName | None = None
    ) -> ModelRecord:
        """One record by key or name; `base` keeps models that fit it and, when a name is
        taken for several bases, prefers the one probed as `base`."""
        return self._stored(name_or_key, type, base).public()

    def _stored(
        self, name_or_key: str, type: ModelType | None = None, base: BaseName | None = None
    ) -> StoredModel:
        pool = [
            m
            for m in self.db.models()
            if (type is None or m.type == type) and (base is None or m.fits(base))
        ]
        by_key = [m for m in pool if m.key == name_or_key]
        if by_key:
            return by_key[0]
        matches = [m for m in pool if m.name.casefold() == name_or_key.casefold()]
        if len(matches) > 1 and base is not None:
            matches = [m for m in matches if m.base == base] or matches
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
        fewstep: str = _UNSET,
    ) -> ModelRecord:
        """Change user-editable fields; edited fields are kept across rescans."""
        key = self._stored(key).key
        changes: dict[str, Any] = {}
        if fewstep is not _UNSET:
            if fewstep not in FEWSTEP_FAMILIES:
                raise ModelError(
                    f"unknown few-step family '{fewstep}': one of {', '.join(FEWSTEP_FAMILIES)}"
                )
            changes["fewstep"] = fewstep
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
        them back. Nothing outside the models root is ever deleted: a drop-folder entry that
        is a link loses the link, not its target, and a file reached through a linked folder
        stays (the next scan records it again until the link is removed)."""
        stored = self._stored(key)
        if delete_files is None:
            delete_files = not stored.in_place or self.paths.in_autoimport(stored.path)
        with self.db.transaction() as c:
            self.db.delete_model(c, stored.key)
        if not stored.in_place:
            discard(self.paths.models, stored.key)
        elif delete_files and not _delete_inside(stored.path, self.paths.root):
            log.warning("kept %s: it lies outside the models root", stored.path)
        return stored.public()

    # --- installing -----------------------------------------------------------------------

    def install(
        self,
        source: str | os.PathLike,
        copy: bool = True,
        name: str | None = None,
        type: ModelType | None = None,
        progress: ProgressCallback | None = None,
        cancel: threading.Event | None = None,
    ) -> ModelRecord:
        """Install a file, folder, URL or Hugging Face repo id; return its record.

        Same content already installed → the existing record is returned unchanged.
        `progress` receives an `InstallProgress` per step (download, probe, hash, copy).
        Setting `cancel`, running past `limits.install_timeout_s` or a source over
        `limits.max_install_gb` stops the install and leaves nothing behind.
        """
        limits = self.config.limits
        guard = InstallGuard(
            timeout_s=limits.install_timeout_s,
            max_bytes=int(limits.max_install_gb * 2**30),
            cancel=cancel or threading.Event(),
            progress=progress,
        )
        return self._install(str(source), copy, name, type, guard)

    def _install(
        self, text: str, copy: bool, name: str | None, type: ModelType | None, guard: InstallGuard
    ) -> ModelRecord:
        guard.check()
        if is_remote(text) and not Path(text).expanduser().exists():
            with fetch_remote(text, self.paths.cache, guard) as local:
                return self._install(str(local), True, name or _remote_name(text), type, guard)
        path = Path(text).expanduser().resolve()
        try:
            fingerprint = autoimport.fingerprint(path)
        except OSError:
            raise ModelError(f"{path}: no such file or folder") from None
        guard.check_size(fingerprint.size, path.name)
        ByteCounter(guard, "probe", None).add(0, path.name)
        found = probe(path, expect=type, progress=guard)
        if type is not None and found.type != type:
            raise ModelError(f"{path.name}: is a {found.type} model, not a {type}")
        existing = self.db.by_hash(found.hash)
        if existing is not None:
            return existing.public()
        facts = card_facts(
            found.metadata,
            sidecar_base(found.weights, path),
            self.config.limits.metadata_kept_kb * 1024,
        )
        key = uuid.uuid4().hex
        clean = sanitize_name(name or stem(path))
        stored = StoredModel.from_probe(key, found, path, facts, clean, not copy, fingerprint)
        guard.check()
        if not copy:
            return self.db.insert_new(stored).public()
        extras = {}
        if facts.preview_path is not None:
            extras["preview" + facts.preview_path.suffix.lower()] = facts.preview_path
        with install_lock(self.paths.install_lock, exclusive=False):
            copied = copy_into(
                self.paths.models, key, path, sanitize_name(path.name), extras, guard
            )
            preview = next(iter(extras), None)
            stored = stored.model_copy(
                update={
                    "path": copied,
                    "preview_path": copied.parent / preview if preview else None,
                }
            )
            try:
                stored = self.db.insert_new(stored)
            except BaseException:
                discard(self.paths.models, key)
                raise
        return stored.public()

    def _finish_lora_migrations(self) -> None:
        """Finish migrations 2–5 once: re-probe LoRAs recorded before records held every
        base they fit, their layer kinds, the base evidence, the engine's warnings and the
        embeddings the file carries. A file
        that is gone, changed or unreadable keeps the defaults (its own base, nothing else);
        the next probe of it (a rescan) records them."""
        rows = self.db.unprobed_loras()
        if rows:
            log.info("re-reading %d LoRA(s) recorded by an earlier version", len(rows))
        for stored in rows:
            # the defaults (StoredModel.from_row)
            facts: dict[str, Any] = {"compatible_bases": stored.compatible_bases}
            facts.update(layer_kinds={}, base_evidence=[], warnings=[], bundled_embeddings=[])
            if stored.status == "ok":
                try:
                    found = probe(stored.path, expect="lora")
                except (ModelError, OSError):
                    found = None
                if found is not None and found.hash == stored.hash:
                    facts = {col: getattr(found, col) for col in REPROBED_COLUMNS}
            self.db.set_probed_facts(stored.key, facts)

    def _finish_hash_migration(self) -> None:
        """Finish migration 7 once: the A1111/Civitai hashes of models recorded before records
        held them (one read of each file; folders A1111 cannot load have none). A file that is
        gone, changed or unreadable stays without them until a rescan reads it."""
        rows = self.db.unhashed()
        if rows:
            log.info("hashing %d model(s) recorded by an earlier version", len(rows))
        for stored in rows:
            if single_file(stored.path) is None and stored.path.is_dir():
                self.db.set_hashes(stored.key, stored.hash or "", {})
                continue
            try:
                digest, hashes = content_hashes(stored.path, stored.type, stored.metadata)
            except (ModelError, OSError):
                continue
            self.db.set_hashes(stored.key, digest, hashes)

    def _clean_interrupted_installs(self) -> None:
        with install_lock(self.paths.install_lock, exclusive=True, wait=False) as held:
            if held:
                known = {m.key for m in self.db.models("WHERE in_place = 0")}
                clean_leftovers(self.paths.models, known)

    # --- autoimport -----------------------------------------------------------------------

    def scan(self, full: bool = False) -> ScanReport:
        """Bring records in line with the drop folders (and in-place files); unchanged files
        (same size and mtime) are not re-read unless `full`."""
        return self._scanner.scan(full)

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

        autoimport.watch(self.paths.autoimport_folders, rescan, stop_event)

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


def close_matches(query: str, names: list[str], limit: int = 5) -> list[str]:
    """Names like `query` (difflib), plus names that contain it or that it contains."""
    folded = {n.casefold(): n for n in names}
    q = query.casefold()
    similar = difflib.get_close_matches(q, list(folded), n=limit, cutoff=0.5)
    overlapping = [f for f in folded if f and (q in f or f in q)]
    return [folded[f] for f in dict.fromkeys(similar + overlapping)][:limit]


def _remote_name(source: str) -> str:
    return source.rstrip("/").split("/")[-1].split("?")[0].rsplit(".", 1)[0]


def _delete_inside(path: Path, root: Path) -> bool:
    """Delete `path` if the entry itself lies inside `root` once links are resolved; a link is
    removed, never what it points to. Returns whether it was ours to delete."""
    import shutil

    if not path.parent.resolve().is_relative_to(root.resolve()):
        return False  # reached through a linked folder: the entry lives elsewhere
    if path.is_symlink():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path, ignore_errors=True)  # does not follow links inside
    else:
        path.unlink(missing_ok=True)
    return True
