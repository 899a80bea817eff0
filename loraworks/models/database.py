"""SQLite storage for model records and gallery images, with numbered schema migrations.

One connection per manager, shared by threads under a lock (the server's worker and request
threads); WAL mode lets a CLI process read while the server writes.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pydantic_core import to_jsonable_python

from loraworks.models.errors import ModelError
from loraworks.models.names import unique_name
from loraworks.models.records import ImageRecord
from loraworks.models.stored import REPROBED_COLUMNS, StoredModel, now

# Each entry moves the schema from version i to i + 1. Never edit a shipped entry; append.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE models (
        key TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        type TEXT NOT NULL,
        base TEXT,
        format TEXT NOT NULL,
        path TEXT NOT NULL,
        in_place INTEGER NOT NULL,
        hash TEXT,
        size INTEGER NOT NULL,
        mtime_ns INTEGER NOT NULL DEFAULT 0,
        source TEXT NOT NULL,
        trigger_words TEXT NOT NULL DEFAULT '[]',
        default_weight REAL,
        is_lcm INTEGER NOT NULL DEFAULT 0,
        description TEXT NOT NULL DEFAULT '',
        metadata TEXT NOT NULL DEFAULT '{}',
        preview_path TEXT,
        status TEXT NOT NULL DEFAULT 'ok',
        error TEXT,
        user_edits TEXT NOT NULL DEFAULT '[]',
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        UNIQUE (type, base, name)
    );
    CREATE INDEX models_hash ON models (hash);
    CREATE UNIQUE INDEX models_path ON models (path);
    CREATE TABLE skipped_files (
        path TEXT PRIMARY KEY,
        size INTEGER NOT NULL,
        mtime_ns INTEGER NOT NULL,
        duplicate_of TEXT NOT NULL
    );
    CREATE TABLE images (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        path TEXT NOT NULL,
        recipe TEXT NOT NULL,
        created_at TEXT NOT NULL
    );
    """,
    # 2: every base a model fits. Main models and VAEs fit their own; LoRA rows stay NULL
    # until the manager re-probes their files on open (a CLIP-L-only LoRA fits sd1 and sdxl).
    """
    ALTER TABLE models ADD COLUMN compatible_bases TEXT;
    UPDATE models SET compatible_bases = '["' || base || '"]'
        WHERE type != 'lora' AND base IS NOT NULL;
    UPDATE models SET compatible_bases = '[]' WHERE base IS NULL;
    """,
    # 3: a LoRA's layer kinds (`{"loha": 120}`); LoRA rows stay NULL until the manager
    # re-probes their files on open, as for migration 2.
    """
    ALTER TABLE models ADD COLUMN layer_kinds TEXT;
    UPDATE models SET layer_kinds = '{}' WHERE type != 'lora';
    """,
    # 4: how the engine decided a LoRA's base and what it warned about; LoRA rows stay NULL
    # until the manager re-probes their files on open, as for migration 2.
    """
    ALTER TABLE models ADD COLUMN base_evidence TEXT;
    ALTER TABLE models ADD COLUMN warnings TEXT;
    UPDATE models SET base_evidence = '[]', warnings = '[]' WHERE type != 'lora';
    """,
    # 5: textual-inversion embeddings: an embedding's vector count, and the embeddings a LoRA
    # file carries; LoRA rows stay NULL until the manager re-probes their files on open, as
    # for migration 2 (no embedding record predates this migration).
    """
    ALTER TABLE models ADD COLUMN vectors INTEGER;
    ALTER TABLE models ADD COLUMN bundled_embeddings TEXT;
    UPDATE models SET bundled_embeddings = '[]' WHERE type != 'lora';
    """,
    # 6: few-step families beyond LCM (#18): `is_lcm` becomes `fewstep` ('lcm' or 'none' for
    # older rows; a rescan or `models edit --fewstep` sets the others) and the step count the
    # file states.
    """
    ALTER TABLE models ADD COLUMN fewstep TEXT NOT NULL DEFAULT 'none';
    ALTER TABLE models ADD COLUMN fewstep_steps INTEGER;
    UPDATE models SET fewstep = 'lcm' WHERE is_lcm != 0;
    ALTER TABLE models DROP COLUMN is_lcm;
    """,
    # 7: the hashes A1111 and Civitai know a model by (#19, `autohashes`); NULL until the
    # manager re-reads the file on open (`ModelManager._finish_hash_migration`).
    """
    ALTER TABLE models ADD COLUMN hashes TEXT;
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)


class Database:
    """Typed access to the tables; every write is one transaction."""

    def __init__(self, path: Path) -> None:
        self._lock = threading.RLock()
        self._conn = sqlite3.connect(
            path, check_same_thread=False, timeout=30, isolation_level=None
        )
        self._conn.row_factory = sqlite3.Row
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=FULL")
        self._migrate()

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def _migrate(self) -> None:
        with self.transaction() as c:
            c.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            row = c.execute("SELECT version FROM schema_version").fetchone()
            version = row[0] if row else 0
            if version > SCHEMA_VERSION:
                raise ModelError(
                    f"the database has schema version {version}, newer than this loraworks "
                    f"({SCHEMA_VERSION}); upgrade loraworks"
                )
            for script in MIGRATIONS[version:]:
                for statement in script.split(";"):
                    if statement.strip():
                        c.execute(statement)
            c.execute("DELETE FROM schema_version")
            c.execute("INSERT INTO schema_version VALUES (?)", (SCHEMA_VERSION,))

    # --- models ---------------------------------------------------------------------------

    def models(self, where: str = "", params: tuple = ()) -> list[StoredModel]:
        with self._lock:
            rows = self._conn.execute(
                f"SELECT * FROM models {where} ORDER BY type, base, name COLLATE NOCASE", params
            ).fetchall()
        return [StoredModel.from_row(r) for r in rows]

    def model(self, key: str) -> StoredModel | None:
        found = self.models("WHERE key = ?", (key,))
        return found[0] if found else None

    def by_path(self, path: Path) -> StoredModel | None:
        found = self.models("WHERE path = ?", (str(path),))
        return found[0] if found else None

    def by_hash(self, digest: str) -> StoredModel | None:
        found = self.models("WHERE hash = ? AND status != 'missing'", (digest,))
        return found[0] if found else None

    def names(self, type_: str, base: str | None) -> set[str]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT name FROM models WHERE type = ? AND base IS ?", (type_, base)
            ).fetchall()
        return {r[0] for r in rows}

    def unprobed_loras(self) -> list[StoredModel]:
        """LoRA rows from before migrations 2–5: some of `REPROBED_COLUMNS` unknown."""
        unknown = " OR ".join(f"{col} IS NULL" for col in REPROBED_COLUMNS)
        return self.models(f"WHERE type = 'lora' AND ({unknown})")

    def unhashed(self) -> list[StoredModel]:
        """Usable rows from before migration 7, whose `hashes` are unknown."""
        return self.models("WHERE hashes IS NULL AND status = 'ok'")

    def set_hashes(self, key: str, content: str, hashes: dict[str, str]) -> None:
        """Fill one migrated row's `hashes`, if its content is still `content` and no other
        process (or rescan) filled them meanwhile."""
        with self.transaction() as c:
            c.execute(
                "UPDATE models SET hashes = ? WHERE key = ? AND hash = ? AND hashes IS NULL",
                (json.dumps(hashes), key, content),
            )

    def set_probed_facts(self, key: str, facts: dict[str, Any]) -> None:
        """Fill one migrated row's `REPROBED_COLUMNS`; what another process filled (or
        rescanned) is left alone."""
        cols = [col for col in REPROBED_COLUMNS if col in facts]
        sets = ", ".join(f"{col} = COALESCE({col}, ?)" for col in cols)
        with self.transaction() as c:
            c.execute(
                f"UPDATE models SET {sets} WHERE key = ?",
                (*(json.dumps(to_jsonable_python(facts[col])) for col in cols), key),
            )

    def upsert(self, c: sqlite3.Connection, stored: StoredModel) -> None:
        """Insert or replace inside the caller's transaction."""
        values = stored.to_row()
        columns = ", ".join(values)
        marks = ", ".join("?" for _ in values)
        c.execute(
            f"INSERT OR REPLACE INTO models ({columns}) VALUES ({marks})", tuple(values.values())
        )

    def insert_new(self, stored: StoredModel) -> StoredModel:
        """Insert a new record, settling its unique name inside the write transaction (another
        process may have taken the name, or recorded the same in-place file, meanwhile)."""
        with self.transaction() as c:
            if stored.in_place and (other := self.by_path(stored.path)) is not None:
                return other
            name = unique_name(stored.name, self.names(stored.type, stored.base))
            stored = stored.model_copy(update={"name": name})
            self.upsert(c, stored)
        return stored

    def delete_model(self, c: sqlite3.Connection, key: str) -> None:
        c.execute("DELETE FROM models WHERE key = ?", (key,))

    # --- skipped duplicates ---------------------------------------------------------------

    def skipped(self) -> dict[str, sqlite3.Row]:
        with self._lock:
            rows = self._conn.execute("SELECT * FROM skipped_files").fetchall()
        return {r["path"]: r for r in rows}

    # --- images ---------------------------------------------------------------------------

    def add_image(self, path: Path, recipe: dict[str, Any]) -> ImageRecord:
        created = now()
        with self.transaction() as c:
            cur = c.execute(
                "INSERT INTO images (path, recipe, created_at) VALUES (?, ?, ?)",
                (str(path), json.dumps(recipe), created),
            )
        return ImageRecord(id=cur.lastrowid, path=path, recipe=recipe, created_at=created)

    def images(self, offset: int, limit: int) -> list[ImageRecord]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT * FROM images ORDER BY id DESC LIMIT ? OFFSET ?", (limit, offset)
            ).fetchall()
        return [_image(r) for r in rows]

    def image(self, image_id: int) -> ImageRecord | None:
        with self._lock:
            row = self._conn.execute("SELECT * FROM images WHERE id = ?", (image_id,)).fetchone()
        return _image(row) if row else None

    def count_images(self) -> int:
        with self._lock:
            return self._conn.execute("SELECT COUNT(*) FROM images").fetchone()[0]

    def delete_image(self, image_id: int) -> None:
        with self.transaction() as c:
            c.execute("DELETE FROM images WHERE id = ?", (image_id,))


def _image(row: sqlite3.Row) -> ImageRecord:
    return ImageRecord(
        id=row["id"],
        path=Path(row["path"]),
        recipe=json.loads(row["recipe"]),
        created_at=row["created_at"],
    )
