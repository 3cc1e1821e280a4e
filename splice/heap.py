"""The interpreter's heap as a long-running server wants it: start-up objects out of GC.

Why: a serving process holds ~33,000 objects made at start (modules, config, the
loop) that live as long as it does. CPython's full (generation 2) collection walks
every one of them each time, and holds the GIL while it does: measured under
keep-alive load here, 13-14 ms with no traffic moving on any connection. Full
collections are rare but do come in steady state (one in the first half-minute of a
keep-alive run), and each is a tail-latency spike for everything in flight.

``settle`` collects once (the start-up garbage: ~400 objects from argument and
config parsing) and then freezes what is left: frozen objects are never walked
again. A full collection then walks only what was made since: ~0.1 ms with 64
connections. Objects made later are collected as usual; a frozen object whose
count drops to zero is still freed at once. Only a cycle made purely of start-up
objects would now never be collected, and the collection before the freeze takes
those there are at start. It runs once, before the first connection: freezing
later would also freeze the connections then open, whose cycles (if any) would
leak.

``GcClock`` times each collection (a ``gc.callbacks`` entry: two calls per
collection, none per request), for ``splice_gc_seconds_total``.
"""

from __future__ import annotations

import gc
import time
from typing import Any, Final

__all__ = ["CLOCK", "GcClock", "gc_snapshot", "settle"]

#: CPython's generations: 0, 1 and 2 (the full collection)
GENERATIONS: Final = 3


def settle() -> int:
    """Start ``CLOCK``, collect the start-up garbage (timed), freeze the rest; how many
    objects are now frozen.

    Once per process: a second call (a worker told to start again) freezes nothing more.
    """
    CLOCK.start()
    if not gc.get_freeze_count():
        gc.collect()
        gc.freeze()
    return gc.get_freeze_count()


class GcClock:
    """Seconds spent in collections per generation, summed since ``start``."""

    def __init__(self) -> None:
        self.seconds = [0.0] * GENERATIONS
        self._began = 0.0

    def start(self) -> None:
        if self._on_gc not in gc.callbacks:
            gc.callbacks.append(self._on_gc)

    def stop(self) -> None:
        if self._on_gc in gc.callbacks:
            gc.callbacks.remove(self._on_gc)

    def _on_gc(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._began = time.perf_counter()
        else:
            self.seconds[info["generation"]] += time.perf_counter() - self._began


#: this process's clock: one per interpreter, as ``gc`` is
CLOCK: Final = GcClock()


def gc_snapshot() -> dict[str, Any]:
    """Collections, objects collected and seconds, per generation; objects frozen.

    Plain numbers and lists, so ``exposition.merge`` sums workers' snapshots.
    """
    stats = gc.get_stats()
    return {
        "collections": [s["collections"] for s in stats],
        "collected": [s["collected"] for s in stats],
        "seconds": list(CLOCK.seconds),
        "frozen": gc.get_freeze_count(),
    }
