"""Counters and histograms as plain Python numbers, turned into Prometheus text at scrape time.

A ``prometheus_client`` Counter takes a lock on every ``inc()``: about a microsecond,
per event, on the hot path. Here counting is an integer add or a bucket search in a
fixed bucket list; the exposition (``splice.admin``) reads a ``snapshot()`` when
scraped. Snapshots are plain dicts, so workers' figures can be summed.
"""

from __future__ import annotations

from typing import Any, Final

#: seconds; spans a loopback dial (~50 µs) to a connect timeout (5 s)
BUCKETS: Final[tuple[float, ...]] = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
    0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
#: per-shed series are kept for at most this many sheds (the rest count as "other"),
#: so a scan of random names cannot blow up the exposition
MAX_SHED_SERIES: Final = 256


class Histogram:
    __slots__ = ("counts", "sum")

    def __init__(self) -> None:
        self.counts = [0] * (len(BUCKETS) + 1)
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        # bisect_left by hand: compiled, a loop over the constant tuple is native float
        # compares (most observations stop at the first bucket), where calling bisect
        # boxes the float and compares objects
        i = 0
        for bound in BUCKETS:
            if seconds <= bound:
                break
            i += 1
        self.counts[i] += 1
        self.sum += seconds

    def snapshot(self) -> dict[str, Any]:
        return {"counts": list(self.counts), "sum": self.sum}


class Metrics:
    def __init__(self) -> None:
        #: client connections accepted, and refused by ``allow_clients``. Attributes, not
        #: keys of a Counter: compiled, ``+= 1`` on one is a native add, where a Counter's
        #: item goes through its type's slots twice (a get and a set, per connection)
        self.accepted = 0
        self.denied = 0
        #: connections closed, by outcome ("OK", "CONNECT_FAILED", ...)
        self.closed_by: dict[str, int] = {}
        self.bytes_up = 0
        self.bytes_down = 0
        #: shed -> connections closed / bytes up / bytes down. Plain dicts, not Counters:
        #: compiled, an exact dict's get and set are direct calls, a subclass's go
        #: through the type's slots (three per closed connection)
        self.shed_conns: dict[str, int] = {}
        self.shed_up: dict[str, int] = {}
        self.shed_down: dict[str, int] = {}
        self.dial = Histogram()
        self.first_byte = Histogram()
        self.head_parse = Histogram()

    def closed(self, shed: str, outcome: str, up: int, down: int) -> None:
        """A connection ended; ``up``/``down`` are its bytes since its last ``served``."""
        closed = self.closed_by
        closed[outcome] = closed.get(outcome, 0) + 1
        self.served(shed, up, down)

    def served(self, shed: str, up: int, down: int) -> None:
        """A run of requests to ``shed`` ended (a connection's last one, or it moved on)."""
        self.bytes_up += up
        self.bytes_down += down
        if shed:
            conns = self.shed_conns
            n = conns.get(shed)
            if n is None:
                if len(conns) >= MAX_SHED_SERIES:
                    shed = "other"
                    n = conns.get(shed, 0)
                else:
                    n = 0
            conns[shed] = n + 1
            self.shed_up[shed] = self.shed_up.get(shed, 0) + up
            self.shed_down[shed] = self.shed_down.get(shed, 0) + down

    def counts(self) -> dict[str, int]:
        """accepted, denied, and closed by outcome ("closed:OK", ...): the snapshot's keys."""
        out = {"accepted": self.accepted, "denied": self.denied}
        for outcome, n in self.closed_by.items():
            out["closed:" + outcome] = n
        return out

    def snapshot(self, active: int, resolver: dict[str, int]) -> dict[str, Any]:
        """Everything as plain JSON-able values; ``merge`` sums several of these."""
        return {
            "active": active,
            "counts": self.counts(),
            "bytes_up": self.bytes_up,
            "bytes_down": self.bytes_down,
            "shed_conns": dict(self.shed_conns),
            "shed_up": dict(self.shed_up),
            "shed_down": dict(self.shed_down),
            "dial": self.dial.snapshot(),
            "first_byte": self.first_byte.snapshot(),
            "head_parse": self.head_parse.snapshot(),
            "resolver": dict(resolver),
        }
