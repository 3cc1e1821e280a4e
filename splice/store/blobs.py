"""Content-addressed blobs: ``blobs/ab/abcdef...`` named by the SHA-256 of their bytes.

A blob is written to ``tmp/PID-RANDOM.part`` while it streams, hashed on the way,
fsynced and only then renamed to its name (``install``), so a name always holds the
whole of what hashes to it: a crash leaves at most a ``.part`` file, which
``clean_tmp`` removes once its writer's process is gone. Identical bodies land on
the same name, so they are stored once.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

#: a blob's file name: the hex SHA-256, nothing else
_SHA = re.compile(r"[0-9a-f]{64}")
#: "PID-TOKEN.part": the pid says whether the writer is still alive
_PART = re.compile(r"([0-9]+)-[0-9a-f]+\.part")
#: big enough that a 64 MiB body is a few hundred writes, small enough to not matter
WRITE_BUFFER = 1024 * 1024


def is_sha(text: str) -> bool:
    return _SHA.fullmatch(text) is not None


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: alive
    return True


class BlobStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.dir = root / "blobs"
        self.tmp = root / "tmp"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.tmp.mkdir(parents=True, exist_ok=True)

    def path(self, sha: str) -> Path:
        if not is_sha(sha):
            raise ValueError(f"not a blob name: {sha!r}")
        return self.dir / sha[:2] / sha

    def writer(self, limit: int | None = None) -> BlobWriter:
        return BlobWriter(self, limit)

    def open(self, sha: str) -> BinaryIO:
        """The blob for reading. Raises FileNotFoundError."""
        return open(self.path(sha), "rb")

    def exists(self, sha: str) -> bool:
        return self.path(sha).is_file()

    def remove(self, sha: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path(sha).unlink()

    def rehash(self, sha: str) -> str:
        """The SHA-256 of the blob's bytes now (``verify``). Raises OSError."""
        with open(self.path(sha), "rb") as f:
            return hashlib.file_digest(f, "sha256").hexdigest()

    def names(self) -> Iterator[str]:
        """Every blob file's name (a SHA-256), in no order."""
        for sub in self.dir.iterdir():
            if sub.is_dir():
                yield from (p.name for p in sub.iterdir() if is_sha(p.name))

    def clean_tmp(self) -> int:
        """Remove ``.part`` files whose writer process is gone; how many were removed."""
        removed = 0
        for p in self.tmp.iterdir():
            m = _PART.fullmatch(p.name)
            if m is not None and not process_alive(int(m[1])):
                with contextlib.suppress(FileNotFoundError):
                    p.unlink()
                    removed += 1
        return removed


class BlobWriter:
    """One blob being written. ``write``... then ``finish`` and ``install``, or ``abort``."""

    def __init__(self, store: BlobStore, limit: int | None) -> None:
        self.store = store
        self.limit = limit
        self.size = 0
        self.sha256 = ""
        #: handed to a commit job, which alone may abort it now
        self.committing = False
        self._hash = hashlib.sha256()
        self.tmp = store.tmp / f"{os.getpid()}-{secrets.token_hex(8)}.part"
        fd = os.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        self._file: BinaryIO | None = open(fd, "wb", buffering=WRITE_BUFFER)  # noqa: SIM115

    @property
    def failed(self) -> bool:
        """Aborted, or grew past ``limit``: nothing will be stored."""
        return self._file is None and not self.sha256

    def write(self, data: bytes | memoryview) -> None:
        """Raises OSError (ENOSPC...) once, the writer aborted: later writes are ignored."""
        if self._file is None:
            return
        self.size += len(data)
        if self.limit is not None and self.size > self.limit:
            self.abort()
            return
        self._hash.update(data)
        try:
            self._file.write(data)
        except OSError:
            self.abort(force=True)  # a full disk, say: no ``.part`` file may stay behind
            raise

    def finish(self) -> str:
        """Flush and fsync (blocking: run it off the event loop); the SHA-256."""
        assert self._file is not None, "finish after abort"
        f, self._file = self._file, None
        try:
            f.flush()
            os.fsync(f.fileno())
        finally:
            f.close()
        self.sha256 = self._hash.hexdigest()
        return self.sha256

    def install(self) -> Path:
        """Rename the finished temp file to its name (replacing an identical copy)."""
        final = self.store.path(self.sha256)
        final.parent.mkdir(exist_ok=True)
        os.replace(self.tmp, final)
        _fsync_dir(final.parent)
        return final

    def abort(self, *, force: bool = False) -> None:
        """Drop the temp file; a writer being committed is left to its commit job."""
        if self.committing and not force:
            return
        f, self._file = self._file, None
        if f is not None:
            with contextlib.suppress(OSError):  # closing flushes: ENOSPC again, say
                f.close()
        with contextlib.suppress(FileNotFoundError):
            self.tmp.unlink()
