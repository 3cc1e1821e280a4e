"""The store's index: SQLite (stdlib, WAL) with one row per recorded exchange.

``entries`` maps a key to the recorded response (status, reason, headers) and the
blob holding its body; ``blobs`` lists each blob once with its size, so the size cap
counts a body shared by many entries once. ``used_at`` orders LRU eviction. ``pins``
holds (key, pid) for replays in progress in any process sharing the store; eviction
skips pinned keys, and pins of dead processes are dropped. WAL lets workers read while
one writes; ``synchronous=NORMAL`` is crash-safe (kill -9) and never corrupts on power loss.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: a writer in another worker holds the lock for a rename and an insert: milliseconds
BUSY_TIMEOUT = 30.0
_SCHEMA = """
CREATE TABLE IF NOT EXISTS blobs (sha TEXT PRIMARY KEY, size INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS entries (
    key TEXT PRIMARY KEY, method TEXT NOT NULL, url TEXT NOT NULL,
    status INTEGER NOT NULL, reason TEXT NOT NULL, headers TEXT NOT NULL,
    request TEXT NOT NULL, blob TEXT NOT NULL REFERENCES blobs(sha), size INTEGER NOT NULL,
    recorded_at REAL NOT NULL, used_at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS entries_used ON entries(used_at);
CREATE INDEX IF NOT EXISTS entries_blob ON entries(blob);
CREATE TABLE IF NOT EXISTS pins (token TEXT PRIMARY KEY, key TEXT NOT NULL, pid INTEGER NOT NULL);
"""
_COLUMNS = "key, method, url, status, reason, headers, request, blob, size, recorded_at, used_at"


@dataclass(frozen=True, slots=True)
class Entry:
    key: str
    method: str
    url: str
    status: int
    reason: str
    #: response fields as recorded (original case), minus hop-by-hop and framing fields
    headers: tuple[tuple[str, str], ...]
    #: the key material (what was matched) and anything else worth showing
    request: dict[str, Any]
    blob: str
    size: int
    recorded_at: float
    used_at: float

    def to_json(self) -> dict[str, Any]:
        d = {name: getattr(self, name) for name in _COLUMNS.split(", ")}
        d["headers"] = [list(h) for h in self.headers]
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Entry:
        values = {name: d[name] for name in _COLUMNS.split(", ")}
        values["headers"] = tuple((str(n), str(v)) for n, v in d["headers"])
        return cls(**values)


def _entry(row: tuple[Any, ...]) -> Entry:
    key, method, url, status, reason, headers, request, blob, size, rec, used = row
    fields = tuple((n, v) for n, v in json.loads(headers))
    return Entry(
        key, method, url, status, reason, fields, json.loads(request), blob, size, rec, used
    )


class Index:
    def __init__(self, path: Path, *, reader: bool = False) -> None:
        """``reader``: a read-only connection that never waits (the event loop's lookups);
        WAL readers do not wait for a writer, and anything else is SQLITE_BUSY at once."""
        if reader:
            uri = f"{path.resolve().as_uri()}?mode=ro"
            self.db = sqlite3.connect(
                uri, uri=True, timeout=0, isolation_level=None, check_same_thread=False
            )
            return
        self.db = sqlite3.connect(
            path, timeout=BUSY_TIMEOUT, isolation_level=None, check_same_thread=False
        )
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        with self.transaction():
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    self.db.execute(statement)

    def close(self) -> None:
        self.db.close()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE: the write lock for the whole block, committed at its end."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    def get(self, key: str) -> Entry | None:
        row = self.db.execute(f"SELECT {_COLUMNS} FROM entries WHERE key = ?", (key,)).fetchone()
        return None if row is None else _entry(row)

    def with_prefix(self, prefix: str) -> list[Entry]:
        rows = self.db.execute(
            f"SELECT {_COLUMNS} FROM entries WHERE substr(key, 1, ?) = ?", (len(prefix), prefix)
        )
        return [_entry(r) for r in rows]

    def entries(self) -> list[Entry]:
        rows = self.db.execute(f"SELECT {_COLUMNS} FROM entries ORDER BY url, method, key")
        return [_entry(r) for r in rows]

    def blobs(self) -> list[tuple[str, int]]:
        return list(self.db.execute("SELECT sha, size FROM blobs ORDER BY sha"))

    def total_bytes(self) -> int:
        return int(self.db.execute("SELECT COALESCE(SUM(size), 0) FROM blobs").fetchone()[0])

    def put(self, e: Entry) -> str | None:
        """Insert or replace (inside ``transaction``); the replaced blob if now unused."""
        old = self.db.execute("SELECT blob FROM entries WHERE key = ?", (e.key,)).fetchone()
        self.db.execute("INSERT OR IGNORE INTO blobs VALUES (?, ?)", (e.blob, e.size))
        row = (
            *(e.key, e.method, e.url, e.status, e.reason),
            json.dumps([list(h) for h in e.headers]),
            json.dumps(e.request, sort_keys=True),
            *(e.blob, e.size, e.recorded_at, e.used_at),
        )
        self.db.execute(f"INSERT OR REPLACE INTO entries ({_COLUMNS}) VALUES ({'?, ' * 10}?)", row)
        return self._drop_blob_if_unused(old[0]) if old and old[0] != e.blob else None

    def delete(self, key: str) -> str | None:
        """Delete an entry (inside ``transaction``); its blob if no entry uses it now."""
        row = self.db.execute("DELETE FROM entries WHERE key = ? RETURNING blob", (key,)).fetchone()
        return None if row is None else self._drop_blob_if_unused(row[0])

    def _drop_blob_if_unused(self, sha: str) -> str | None:
        cur = self.db.execute(
            "DELETE FROM blobs WHERE sha = ? AND NOT EXISTS (SELECT 1 FROM entries WHERE blob = ?)",
            (sha, sha),
        )
        return sha if cur.rowcount else None

    def touch(self, key: str, now: float) -> None:
        self.db.execute("UPDATE entries SET used_at = ? WHERE key = ?", (now, key))

    def pin(self, token: str, key: str) -> None:
        self.db.execute("INSERT INTO pins VALUES (?, ?, ?)", (token, key, os.getpid()))

    def unpin(self, token: str) -> None:
        self.db.execute("DELETE FROM pins WHERE token = ?", (token,))

    def drop_dead_pins(self, alive: Callable[[int], bool]) -> None:
        """Forget pins of processes ``alive(pid)`` says are gone (inside ``transaction``)."""
        for (pid,) in list(self.db.execute("SELECT DISTINCT pid FROM pins")):
            if not alive(pid):
                self.db.execute("DELETE FROM pins WHERE pid = ?", (pid,))

    def lru_unpinned(self) -> Iterator[str]:
        """Keys, least recently used first, that no replay holds."""
        rows = self.db.execute(
            "SELECT key FROM entries WHERE key NOT IN (SELECT key FROM pins) ORDER BY used_at, key"
        )
        return (r[0] for r in rows.fetchall())
