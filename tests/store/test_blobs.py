"""Content-addressed blobs: atomic install, one copy per content, crash leftovers.

A blob is visible only once complete; a writer's temp file is removed when its
process is gone, and never while it is alive.
"""

from __future__ import annotations

import errno
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
from store_peers import full_writer

from splice.store.blobs import BlobStore


def _write(store: BlobStore, *parts: bytes, limit: int | None = None) -> str:
    w = store.writer(limit)
    for p in parts:
        w.write(p)
    sha = w.finish()
    w.install()
    return sha


def test_a_blob_is_named_by_its_hash(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    sha = _write(store, b"hello ", b"world")
    assert sha == hashlib.sha256(b"hello world").hexdigest()
    assert store.path(sha).read_bytes() == b"hello world"
    assert store.rehash(sha) == sha and list(store.names()) == [sha]
    assert list(store.tmp.iterdir()) == []


def test_identical_content_is_stored_once(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    assert _write(store, b"same") == _write(store, b"sa", b"me")
    assert len(list(store.names())) == 1


def test_nothing_is_visible_before_install(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    w = store.writer()
    w.write(b"partial")
    assert list(store.names()) == [] and len(list(store.tmp.iterdir())) == 1
    w.abort()
    assert list(store.tmp.iterdir()) == []


def test_a_writer_past_its_limit_gives_up(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    w = store.writer(limit=4)
    w.write(b"1234")
    assert not w.failed
    w.write(b"5")
    assert w.failed and list(store.tmp.iterdir()) == []
    w.write(b"more")  # ignored


def test_clean_tmp_removes_only_dead_writers_files(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    (store.tmp / f"{dead.stdout.strip()}-00.part").write_bytes(b"x")
    mine = store.writer()
    mine.write(b"alive")
    assert store.clean_tmp() == 1
    assert [p.name for p in store.tmp.iterdir()] == [mine.tmp.name]
    mine.abort()


def test_a_corrupted_blob_rehashes_differently(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    sha = _write(store, b"data")
    path = store.path(sha)
    os.chmod(path, 0o644)
    path.write_bytes(b"DATA")
    assert store.rehash(sha) != sha


def test_bad_names_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        BlobStore(tmp_path).path("../../etc/passwd")


def test_a_full_disk_fails_the_write_and_removes_the_temp_file(tmp_path: Path) -> None:
    """ENOSPC from a write reaches the caller once; the ``.part`` file is gone then, and
    an abort after it (which closes, and so flushes, again) does not raise."""
    store = BlobStore(tmp_path)
    w = full_writer(store.writer(), room=10)
    w.write(b"12345")
    with pytest.raises(OSError) as err:
        w.write(b"x" * 100)
    assert err.value.errno == errno.ENOSPC
    assert w.failed and list(store.tmp.iterdir()) == []
    w.write(b"more")  # ignored, as past the limit
    w.abort()
    w.abort(force=True)


def test_an_abort_on_a_full_disk_removes_the_temp_file(tmp_path: Path) -> None:
    """Closing flushes what is buffered, which fails again on a full disk: the abort
    must still remove the ``.part`` file, and not raise."""
    store = BlobStore(tmp_path)
    w = full_writer(store.writer(), room=50)
    w.write(b"x" * 50)  # buffered; the disk is full now
    w.abort()
    assert w.failed and list(store.tmp.iterdir()) == []


def test_a_full_disk_at_finish_leaves_no_temp_file_after_abort(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    w = full_writer(store.writer(), room=10**9, at_flush=True)
    with pytest.raises(OSError):
        w.finish()
    w.abort(force=True)
    assert list(store.tmp.iterdir()) == []
