"""The record/replay store: blobs + index, with the rules that keep them consistent.

A recording commits in this order: body fsynced in ``tmp/`` (``BlobWriter.finish``),
then, holding the index's write lock, the rename to the blob's name and the row's
insert, then eviction. So a row never names a missing or partial blob, and eviction
(which unlinks under the same lock) never races a recording of the same body. Replays
pin their key for as long as they stream; eviction skips pinned keys. Blocking: the
proxy calls it from one worker thread (``runtime.StoreRuntime``), the CLI directly.
"""

from __future__ import annotations

import os
import secrets
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


@dataclass(slots=True)
class Replay:
    entry: Entry
    file: BinaryIO
    token: str


@dataclass(slots=True)
class VerifyReport:
    checked: int = 0
    bad: list[dict[str, Any]] = field(default_factory=list)
    orphans: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.bad


class Store:
    def __init__(self, root: str | Path, max_bytes: int) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.blobs = BlobStore(self.root)
        self.index = Index(self.root / "index.sqlite3")
        self.max_bytes = max_bytes
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            self.index.close()

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

    def open_replay(self, key: str) -> Replay | None:
        """The entry and its open blob, pinned; None on a miss (or a damaged blob)."""
        token = secrets.token_hex(8)
        with self._lock:
            with self.index.transaction():
                entry = self.index.get(key)
                if entry is None:
                    return None
                self.index.pin(token, key)
                self.index.touch(key, time.time())
            try:
                f = self.blobs.open(entry.blob)
                if os.fstat(f.fileno()).st_size == entry.size:
                    return Replay(entry, f, token)
                f.close()
            except FileNotFoundError:
                pass
            with self.index.transaction():  # the blob is gone or damaged: a miss, forgotten
                self.index.unpin(token)
                self._delete(key)
        return None

    def close_replay(self, replay: Replay) -> None:
        replay.file.close()
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
