"""``splice.heap``: the start-up heap frozen out of collections, and the collector's clock.

``settle`` runs in a fresh interpreter (a subprocess): frozen, pytest's own heap would
stay out of every collection for the rest of the run.
"""

from __future__ import annotations

import gc
import json
import subprocess
import sys

from splice.heap import GENERATIONS, GcClock, gc_snapshot

SETTLE = """
import gc, json, weakref
from splice.heap import settle, gc_snapshot

class Node:
    def __init__(self): self.me = self

before = Node()                  # made at start: frozen
garbage = weakref.ref(Node())    # start-up garbage: a cycle settle's collection takes
first = settle()
after = Node()                   # made once serving: collected as usual
again = settle()                 # once per process: nothing more is frozen
tracked = {id(o) for o in gc.get_objects()}
walked = {"before": id(before) in tracked, "after": id(after) in tracked}
refs = {"before": weakref.ref(before), "after": weakref.ref(after)}
del before, after                # both now unreachable cycles
gc.collect()
print(json.dumps({
    "first": first, "again": again, "walked": walked,
    "garbage_taken": garbage() is None,
    "alive": {k: r() is not None for k, r in refs.items()},
    "snapshot": gc_snapshot(),
}))
"""


def run_settle() -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, "-c", SETTLE], capture_output=True, text=True, timeout=60, check=True
    )
    result: dict[str, object] = json.loads(done.stdout)
    return result


def test_settle_freezes_the_start_up_heap_once_and_later_objects_stay_collectable() -> None:
    got = run_settle()
    first, again = got["first"], got["again"]
    assert isinstance(first, int) and first > 1000  # the modules imported to get here
    assert again == first
    assert got["garbage_taken"] is True  # collected before the freeze
    # frozen: no collection walks it again, so a cycle of frozen objects stays; the
    # cycle made after settle is found by the next collection
    assert got["walked"] == {"before": False, "after": True}
    assert got["alive"] == {"before": True, "after": False}
    snap = got["snapshot"]
    assert isinstance(snap, dict) and snap["frozen"] == first


def test_the_clock_times_each_generation_and_registers_once() -> None:
    clock = GcClock()
    clock.start()
    clock.start()
    try:
        assert gc.callbacks.count(clock._on_gc) == 1
        gc.collect(0)
        gc.collect(2)
        assert clock.seconds[0] > 0 and clock.seconds[2] > 0
        assert clock.seconds[1] == 0.0
    finally:
        clock.stop()
        clock.stop()
    assert clock._on_gc not in gc.callbacks
    held = list(clock.seconds)
    gc.collect(2)
    assert clock.seconds == held  # stopped: no longer counts


def test_a_snapshot_has_a_figure_per_generation() -> None:
    before = gc_snapshot()
    gc.collect(1)
    after = gc_snapshot()
    for key in ("collections", "collected", "seconds"):
        assert len(after[key]) == GENERATIONS
    assert after["collections"][1] == before["collections"][1] + 1
    assert after["collections"][2] == before["collections"][2]
    assert isinstance(after["frozen"], int)
