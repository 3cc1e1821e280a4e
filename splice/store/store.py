"""The record/replay store: blobs + index, with the rules that keep them consistent.

A recording commits in this order: body fsynced in ``tmp/`` (``BlobWriter.finish``),
then, holding the index's write lock, the rename to the blob's name and the row's
insert, then eviction. So a row never names a missing or partial blob, and eviction
(which unlinks under the same lock) never races a recording of the same body.

A replay of a body up to ``small_body`` bytes reads it whole at lookup: nothing streams
afterwards, so nothing needs protecting. ``peek`` serves such a hit with a SELECT on a
read-only connection that never waits and one read, no write (a write per hit made
small hits ten times slower than forwarding); its caller writes the LRU stamps
(``used_at``) of many hits at once with ``stamp``. Everything ``peek`` leaves (a miss,
a large body, damage) goes to ``open_replay``, under the write lock. A larger body
streams from its blob, so its key is pinned for as long as it does and eviction skips
pinned keys. Blocking: the proxy calls it from a few worker threads
(``runtime.StoreRuntime``) except for ``peek``, the CLI directly.
"""

from __future__ import annotations

import os
import secrets
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any, BinaryIO

from splice.store.blobs import BlobStore, BlobWriter, process_alive
from splice.store.index import Entry, Index

#: an unreferenced blob younger than this may be a recording about to commit
ORPHAN_GRACE = 3600.0
#: bodies up to this size are read whole at lookup (no pin, no write): one socket write
SMALL_BODY = 64 * 1024


@dataclass(slots=True)
class Replay:
    entry: Entry
    #: a small entry's whole body, read at lookup (``file`` is None, nothing is pinned)
    body: bytes | None = None
    #: a large entry's blob, open, its key pinned under ``token`` until ``close_replay``
    file: BinaryIO | None = None
    token: str = ""


@dataclass(slots=True)
class VerifyReport:
    checked: int = 0
    bad: list[dict[str, Any]] = field(default_factory=list)
    orphans: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.bad


class Store:
    def __init__(self, root: str | Path, max_bytes: int, *, small_body: int = SMALL_BODY) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.blobs = BlobStore(self.root)
        self.index = Index(self.root / "index.sqlite3")
        #: ``peek``'s own connection: read-only, never waits, used without the lock
        self.reader = Index(self.root / "index.sqlite3", reader=True)
        self.max_bytes = max_bytes
        self.small_body = small_body
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            self.index.close()
            self.reader.close()

    def recover(self) -> None:
        """After a crash: drop dead writers' temp files, dead pins, old orphan blobs."""
        self.blobs.clean_tmp()
        with self._lock, self.index.transaction():
            self.index.drop_dead_pins(process_alive)
            known = {sha for sha, _ in self.index.blobs()}
            for sha in list(self.blobs.names()):
                path = self.blobs.path(sha)
                if sha not in known and time.time() - path.stat().st_mtime > ORPHAN_GRACE:
                    self.blobs.remove(sha)

    def writer(self) -> BlobWriter:
        """A blob writer that gives up past ``max_bytes`` (such a body cannot be kept)."""
        return self.blobs.writer(limit=self.max_bytes)

    def commit(self, writer: BlobWriter, entry: Entry) -> None:
        """Install a finished blob and its row (replacing the key's old one), then evict."""
        with self._lock, self.index.transaction():
            writer.install()
            old = self.index.put(entry)
            if old is not None:
                self.blobs.remove(old)
            self._evict()

    def _evict(self) -> None:
        self.index.drop_dead_pins(process_alive)
        total = self.index.total_bytes()
        if total <= self.max_bytes:
            return
        sizes = dict(self.index.blobs())
        for key in self.index.lru_unpinned():
            sha = self.index.delete(key)
            if sha is not None:
                self.blobs.remove(sha)
                total -= sizes[sha]
                if total <= self.max_bytes:
                    return

    def peek(self, key: str) -> Replay | None:
        """A small hit, for a thread that must not wait: no lock, no write, and None
        whenever the answer needs more (a miss, a large body, a blob that went or is
        damaged, a busy index): ``open_replay`` decides those. The caller stamps the
        hit (``stamp``)."""
        try:
            entry = self.reader.get(key)
        except sqlite3.Error:
            return None
        if entry is None or entry.size > self.small_body:
            return None
        body = self._read(entry)
        return None if body is None else Replay(entry, body=body)

    def stamp(self, stamps: dict[str, float]) -> None:
        """Write the LRU stamps of hits ``peek`` served (key -> when), in one transaction."""
        with self._lock, self.index.transaction():
            for key, when in stamps.items():
                self.index.touch(key, when)

    def open_replay(self, key: str) -> Replay | None:
        """The entry with its body (small) or its open blob, pinned (large); None on a
        miss. A blob found missing or damaged is a miss, and its entry is forgotten.

        Decided under the write lock, which every change to a row or a blob takes, so a
        blob gone since ``peek`` looked (evicted, or the key recorded anew by another
        process) is told apart from a damaged one. Callers try ``peek`` first.
        """
        with self._lock, self.index.transaction():
            entry = self.index.get(key)
            if entry is None:
                return None
            if entry.size <= self.small_body:
                body = self._read(entry)
                if body is not None:
                    self.index.touch(key, time.time())
                    return Replay(entry, body=body)
            else:
                f = self._open(entry)
                if f is not None:
                    token = secrets.token_hex(8)
                    self.index.pin(token, key)
                    self.index.touch(key, time.time())
                    return Replay(entry, file=f, token=token)
            self._delete(key)  # its blob is missing or damaged
        return None

    def _read(self, entry: Entry) -> bytes | None:
        """A small entry's body; None when its blob is missing or not its size."""
        try:
            with self.blobs.open(entry.blob) as f:
                body = f.read(entry.size + 1)
        except FileNotFoundError:
            return None
        return body if len(body) == entry.size else None

    def _open(self, entry: Entry) -> BinaryIO | None:
        """A large entry's blob, open; None when it is missing or not its size."""
        try:
            f = self.blobs.open(entry.blob)
        except FileNotFoundError:
            return None
        if os.fstat(f.fileno()).st_size == entry.size:
            return f
        f.close()
        return None

    def close_replay(self, replay: Replay) -> None:
        if replay.file is not None:
            replay.file.close()
        if replay.token:
            self.unpin(replay.token)

    def unpin(self, token: str) -> None:
        with self._lock, self.index.transaction():
            self.index.unpin(token)

    def get(self, key: str) -> Entry | None:
        with self._lock:
            return self.index.get(key)

    def find(self, key_prefix: str) -> list[Entry]:
        """Entries whose key starts with ``key_prefix`` (the CLI takes unique prefixes)."""
        with self._lock:
            return self.index.with_prefix(key_prefix.lower())

    def entries(self, url_glob: str | None = None) -> list[Entry]:
        with self._lock:
            found = self.index.entries()
        return [e for e in found if url_glob is None or fnmatchcase(e.url, url_glob)]

    def remove(self, keys: list[str]) -> int:
        """Delete entries (and blobs no other entry uses); how many were deleted."""
        with self._lock, self.index.transaction():
            return sum(self._delete(key) for key in keys)

    def _delete(self, key: str) -> bool:
        existed = self.index.get(key) is not None
        sha = self.index.delete(key)
        if sha is not None:
            self.blobs.remove(sha)
        return existed

    def total_bytes(self) -> int:
        with self._lock:
            return self.index.total_bytes()

    def verify(self) -> VerifyReport:
        """Re-hash every indexed blob; list missing, damaged and unreferenced ones."""
        with self._lock:
            rows = self.index.blobs()
            users = {e.blob: e.key for e in self.index.entries()}
        report = VerifyReport(checked=len(rows))
        for sha, size in rows:
            problem = self._check_blob(sha, size)
            if problem is not None:
                report.bad.append({"blob": sha, "key": users.get(sha), "problem": problem})
        known = {sha for sha, _ in rows}
        report.orphans = sorted(set(self.blobs.names()) - known)
        return report

    def _check_blob(self, sha: str, size: int) -> str | None:
        try:
            actual_size = self.blobs.path(sha).stat().st_size
            actual = self.blobs.rehash(sha)
        except FileNotFoundError:
            return "missing"
        if actual != sha:
            return f"content hashes to {actual}"
        if actual_size != size:
            return f"size {actual_size}, index says {size}"
        return None
