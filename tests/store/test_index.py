"""The SQLite index through ``Store``: replace, shared blobs, LRU eviction, pins, damage.

No network: entries are written with ``store_peers.put``. Sizes are tiny and the cap
is set per test, so each eviction decision is visible in the keys that remain.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from store_peers import put

from splice.store.store import Store


def keys(store: Store) -> set[str]:
    return {e.key[:1] for e in store.entries()}


def test_commit_then_replay(tmp_path: Path) -> None:
    store = Store(tmp_path, 1000)
    e = put(store, "a", b"body")
    rep = store.open_replay(e.key)
    assert rep is not None and rep.entry.key == e.key and rep.file.read() == b"body"
    assert rep.entry.headers == (("X", "1"),)
    store.close_replay(rep)
    assert store.open_replay("f" * 64) is None
    store.close()


def test_replacing_an_entry_drops_its_unused_blob(tmp_path: Path) -> None:
    store = Store(tmp_path, 1000)
    old = put(store, "a", b"old")
    put(store, "a", b"new")
    assert len(store.entries()) == 1 and not store.blobs.exists(old.blob)
    assert store.total_bytes() == 3
    store.close()


def test_shared_blobs_count_once_and_outlive_one_entry(tmp_path: Path) -> None:
    store = Store(tmp_path, 1000)
    a = put(store, "a", b"same")
    put(store, "b", b"same")
    assert store.total_bytes() == 4
    assert store.remove([a.key]) == 1 and store.blobs.exists(a.blob)
    store.remove(["b".ljust(64, "0")])
    assert not store.blobs.exists(a.blob) and store.total_bytes() == 0
    store.close()


def test_lru_eviction_keeps_the_recently_used(tmp_path: Path) -> None:
    store = Store(tmp_path, 250)
    a = put(store, "a", b"1" * 100)
    put(store, "b", b"2" * 100)
    rep = store.open_replay(a.key)  # a is now the most recently used
    assert rep is not None
    store.close_replay(rep)
    put(store, "c", b"3" * 100)
    assert keys(store) == {"a", "c"} and store.total_bytes() == 200
    store.close()


def test_a_replay_in_progress_is_never_evicted(tmp_path: Path) -> None:
    store = Store(tmp_path, 150)
    a = put(store, "a", b"1" * 100)
    rep = store.open_replay(a.key)
    assert rep is not None
    put(store, "b", b"2" * 100)  # over the cap: a is pinned, so b goes, new as it is
    assert keys(store) == {"a"}
    store.close_replay(rep)
    put(store, "c", b"3" * 100)
    assert keys(store) == {"c"}
    store.close()


def test_pins_of_dead_processes_are_dropped(tmp_path: Path) -> None:
    store = Store(tmp_path, 150)
    a = put(store, "a", b"1" * 100)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    with store.index.transaction() as db:
        db.execute("INSERT INTO pins VALUES ('t', ?, ?)", (a.key, int(dead.stdout)))
    put(store, "b", b"2" * 100)
    assert keys(store) == {"b"}
    store.close()


def test_a_body_over_the_cap_is_not_kept(tmp_path: Path) -> None:
    store = Store(tmp_path, 10)
    w = store.writer()
    w.write(b"x" * 11)
    assert w.failed
    store.close()


def test_a_missing_or_damaged_blob_is_a_miss_and_forgotten(tmp_path: Path) -> None:
    store = Store(tmp_path, 1000)
    a = put(store, "a", b"aaaa")
    b = put(store, "b", b"bbbb")
    store.blobs.path(a.blob).unlink()
    os.truncate(store.blobs.path(b.blob), 2)
    assert store.open_replay(a.key) is None and store.open_replay(b.key) is None
    assert store.entries() == []
    store.close()


def test_verify_finds_damage(tmp_path: Path) -> None:
    store = Store(tmp_path, 1000)
    a = put(store, "a", b"aaaa")
    assert store.verify().ok
    path = store.blobs.path(a.blob)
    path.write_bytes(b"AAAA")
    report = store.verify()
    assert not report.ok and report.bad[0]["key"] == a.key
    path.unlink()
    assert store.verify().bad[0]["problem"] == "missing"
    store.close()


def test_index_survives_reopening(tmp_path: Path) -> None:
    store = Store(tmp_path, 1000)
    a = put(store, "a", b"aaaa")
    store.close()
    again = Store(tmp_path, 1000)
    again.recover()
    assert again.get(a.key) == a
    again.close()
