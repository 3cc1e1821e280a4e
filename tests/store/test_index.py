"""The SQLite index through ``Store``: replace, shared blobs, LRU eviction, pins, damage.

No network: entries are written with ``store_peers.put``. Sizes are tiny and the cap
is set per test, so each eviction decision is visible in the keys that remain; tests of
streamed (pinned) replays set ``small_body`` below their sizes.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from store_peers import put

from splice.store import runtime
from splice.store.runtime import StoreRuntime
from splice.store.settings import StoreSettings
from splice.store.store import SMALL_BODY, Replay, Store


def keys(store: Store) -> set[str]:
    return {e.key[:1] for e in store.entries()}


def pins(store: Store) -> int:
    return int(store.index.db.execute("SELECT count(*) FROM pins").fetchone()[0])


def used_at(store: Store, key: str) -> float:
    return float(store.index.db.execute("SELECT used_at FROM entries WHERE key = ?", (key,))
                 .fetchone()[0])  # fmt: skip


def test_commit_then_replay(tmp_path: Path) -> None:
    store = Store(tmp_path, 1000)
    e = put(store, "a", b"body")
    rep = store.open_replay(e.key)
    assert rep is not None and rep.entry.key == e.key and rep.body == b"body"
    assert rep.entry.headers == (("X", "1"),) and rep.file is None and rep.token == ""
    store.close_replay(rep)
    assert store.open_replay("f" * 64) is None
    store.close()


def test_a_large_body_streams_from_its_blob_pinned(tmp_path: Path) -> None:
    store = Store(tmp_path, 1000, small_body=3)
    e = put(store, "a", b"body")
    rep = store.open_replay(e.key)
    assert rep is not None and rep.body is None and rep.file is not None
    assert rep.file.read() == b"body" and pins(store) == 1
    store.close_replay(rep)
    assert rep.file.closed and pins(store) == 0
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
    store = Store(tmp_path, 150, small_body=50)
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


def test_peek_serves_small_hits_and_leaves_everything_else_to_open_replay(
    tmp_path: Path,
) -> None:
    store = Store(tmp_path, 1000, small_body=8)
    small, large = put(store, "a", b"body"), put(store, "b", b"a larger body")
    gone = put(store, "c", b"gone")
    store.blobs.path(gone.blob).unlink()
    other = sqlite3.connect(tmp_path / "index.sqlite3", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # a writer elsewhere: peek must not wait for it
    try:
        rep = store.peek(small.key)
        assert rep is not None and rep.body == b"body" and rep.token == ""
        assert store.peek(large.key) is None and store.peek("f" * 64) is None
        assert store.peek(gone.key) is None
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert keys(store) == {"a", "b", "c"}  # peek decides nothing: open_replay forgets c
    assert store.open_replay(gone.key) is None and keys(store) == {"a", "b"}
    store.stamp({small.key: small.used_at + 60})
    assert used_at(store, small.key) == small.used_at + 60
    store.close()


def test_the_runtime_serves_small_hits_on_the_loop_and_stamps_them(tmp_path: Path) -> None:
    settings = StoreSettings(mode="replay", path=str(tmp_path))
    rt = StoreRuntime.open(settings)
    small = put(rt.store, "a", b"body")
    large = put(rt.store, "b", b"x" * (SMALL_BODY + 1))

    async def replays() -> tuple[Replay | None, Replay | None, Replay | None]:
        return (
            await rt.open_replay(small.key),
            await rt.open_replay(large.key),
            (await rt.open_replay("f" * 64)),
        )

    hit, streamed, miss = asyncio.run(replays())
    assert hit is not None and hit.body == b"body" and miss is None
    assert streamed is not None and streamed.file is not None and streamed.token
    rt.close_replay(streamed)
    rt.close()  # waits for the unpin and writes the hit's stamp
    store = Store(tmp_path, 1000)
    assert used_at(store, small.key) > small.used_at and pins(store) == 0
    store.close()


def test_the_runtime_hands_stamps_over_once_they_are_due(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rt = StoreRuntime.open(StoreSettings(mode="replay", path=str(tmp_path)))
    e = put(rt.store, "a", b"body")
    assert asyncio.run(rt.open_replay(e.key)) is not None
    assert list(rt._stamps) == [e.key]  # not due yet: kept
    monkeypatch.setattr(runtime, "TOUCH_EVERY", 0.0)
    assert asyncio.run(rt.open_replay(e.key)) is not None
    assert rt._stamps == {}  # due: handed to a store thread
    rt.close()
    store = Store(tmp_path, 1000)
    assert used_at(store, e.key) > e.used_at
    store.close()
