"""Metrics snapshots -> Prometheus text; ``merge`` sums the snapshots of several workers.

A snapshot is ``Metrics.snapshot()``'s plain dict (see ``splice.metrics``). ``merge``
adds numbers key by key, dicts recursively and lists (histogram buckets) element-wise,
then folds per-shed series beyond ``MAX_SHED_SERIES`` into "other": each worker caps
its own sheds, the union must be capped again. ``render`` builds a one-off
``prometheus_client`` registry around ``SnapshotCollector`` (counter, gauge and
histogram families, no client-side state) and returns the text exposition.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from splice import __version__
from splice.build import build
from splice.errors import CODES
from splice.metrics import BUCKETS, MAX_SHED_SERIES

#: the per-shed maps of a snapshot, capped together by connections closed
#: mypyc or interpreted: fixed for the life of the process
BUILD = build()
_SHED_KEYS = ("shed_conns", "shed_up", "shed_down")
_HISTOGRAMS = (
    ("dial", "splice_dial_seconds", "Time to connect to a VM (or through the Connect API)."),
    (
        "first_byte",
        "splice_first_upstream_byte_seconds",
        "Time from dial start to the first byte from the VM.",
    ),
    ("head_parse", "splice_head_parse_seconds", "Time to parse a request head."),
)


def merge(snapshots: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """The sum of ``snapshots`` (each a ``Metrics.snapshot()`` dict), per-shed series capped."""
    out: dict[str, Any] = {}
    for snap in snapshots:
        _add(out, snap)
    _cap_sheds(out)
    return out


#: the gauges of a snapshot (paths of keys): a level now, not a running total
GAUGES: tuple[tuple[str, ...], ...] = (("active",), ("upstream_pool", "idle"), ("gc", "frozen"))


def retire(snapshot: Mapping[str, Any]) -> dict[str, Any]:
    """A dead worker's last snapshot as kept in the sums: its counters, its gauges at 0.

    Its connections, pooled VM connections and frozen objects died with it; its counts
    stay, so counters never go back.
    """
    out = copy.deepcopy(dict(snapshot))
    for *path, key in GAUGES:
        inner: Any = out
        for part in path:
            inner = inner.get(part) if isinstance(inner, dict) else None
        if isinstance(inner, dict) and key in inner:
            inner[key] = 0
    return out


def _add(into: dict[str, Any], snap: Mapping[str, Any]) -> None:
    for k, v in snap.items():
        if isinstance(v, Mapping):
            _add(into.setdefault(k, {}), v)
        elif isinstance(v, list):
            cur = into.setdefault(k, [0] * len(v))
            into[k] = [a + b for a, b in zip(cur, v, strict=True)]
        else:
            into[k] = into.get(k, 0) + v


def _cap_sheds(snap: dict[str, Any]) -> None:
    conns: dict[str, int] = snap.get("shed_conns", {})
    if len(conns) <= MAX_SHED_SERIES:
        return
    keep = set(sorted(conns, key=lambda s: (-conns[s], s))[: MAX_SHED_SERIES - 1])
    for key in _SHED_KEYS:
        series: dict[str, int] = snap.get(key, {})
        capped = {s: n for s, n in series.items() if s in keep}
        capped["other"] = sum(n for s, n in series.items() if s not in keep)
        snap[key] = capped


class SnapshotCollector(Collector):
    """Yields metric families from one snapshot; registered in a fresh registry per scrape."""

    def __init__(self, snapshot: Mapping[str, Any]) -> None:
        self.snap = snapshot

    def collect(self) -> Iterator[Metric]:
        yield from _connections(self.snap)
        yield from _bytes(self.snap)
        yield from _histograms(self.snap)
        yield from _resolver(self.snap.get("resolver", {}))
        yield from _upstream_pool(self.snap.get("upstream_pool", {}))
        yield from _supervisor(self.snap.get("supervisor"))
        yield from _gc(self.snap.get("gc"))
        help_ = "splice version, and mypyc or interpreted."
        info = GaugeMetricFamily("splice_build_info", help_, labels=["version", "build"])
        info.add_metric([__version__, BUILD], 1)
        yield info


def _connections(s: Mapping[str, Any]) -> Iterator[Metric]:
    counts: Mapping[str, int] = s.get("counts", {})
    yield CounterMetricFamily(
        "splice_connections_accepted", "Client connections accepted.", counts.get("accepted", 0)
    )
    yield CounterMetricFamily(
        "splice_connections_denied",
        "Client connections refused by allow_clients before a byte was read.",
        counts.get("denied", 0),
    )
    yield GaugeMetricFamily(
        "splice_connections_active", "Client connections open.", s.get("active", 0)
    )
    closed = CounterMetricFamily(
        "splice_connections_closed",
        "Client connections closed, by outcome (OK, an X-Shed-Error code, RESET...).",
        labels=["outcome"],
    )
    errors = CounterMetricFamily(
        "splice_errors", "Connections that ended with an X-Shed-Error code.", labels=["code"]
    )
    for key, n in sorted(counts.items()):
        if key.startswith("closed:"):
            outcome = key[len("closed:") :]
            closed.add_metric([outcome], n)
            if outcome in CODES:
                errors.add_metric([outcome], n)
    yield closed
    yield errors
    per_shed = CounterMetricFamily(
        "splice_shed_connections",
        "Connections closed, or moved to another shed, per shed.",
        labels=["shed"],
    )
    for shed, n in sorted(s.get("shed_conns", {}).items()):
        per_shed.add_metric([shed], n)
    yield per_shed


def _bytes(s: Mapping[str, Any]) -> Iterator[Metric]:
    total = CounterMetricFamily(
        "splice_bytes",
        "Bytes relayed: up = client to VM, down = VM to client.",
        labels=["direction"],
    )
    total.add_metric(["up"], s.get("bytes_up", 0))
    total.add_metric(["down"], s.get("bytes_down", 0))
    yield total
    per_shed = CounterMetricFamily(
        "splice_shed_bytes", "Bytes relayed, per shed and direction.", labels=["shed", "direction"]
    )
    for key, direction in (("shed_up", "up"), ("shed_down", "down")):
        for shed, n in sorted(s.get(key, {}).items()):
            per_shed.add_metric([shed, direction], n)
    yield per_shed


def _histograms(s: Mapping[str, Any]) -> Iterator[Metric]:
    for key, name, doc in _HISTOGRAMS:
        h = s.get(key) or {"counts": [0] * (len(BUCKETS) + 1), "sum": 0.0}
        cumulative: list[tuple[str, float]] = []
        running = 0
        for le, n in zip([*map(repr, BUCKETS), "+Inf"], h["counts"], strict=True):
            running += n
            cumulative.append((le, running))
        yield HistogramMetricFamily(name, doc, buckets=cumulative, sum_value=h["sum"])


def _resolver(r: Mapping[str, int]) -> Iterator[Metric]:
    for key, doc in (
        ("hits", "Shed lookups answered from the resolver cache (good or error)."),
        ("misses", "Shed lookups that had to ask a resolver."),
        ("stale", "Shed lookups answered with a stale address while shed-server failed."),
    ):
        yield CounterMetricFamily(f"splice_resolver_cache_{key}", doc, r.get(key, 0))


def _upstream_pool(p: Mapping[str, int]) -> Iterator[Metric]:
    yield GaugeMetricFamily(
        "splice_upstream_idle", "Idle keep-alive connections to VMs in the pool.", p.get("idle", 0)
    )
    for key, doc in (
        ("reused", "Requests that closed their connection and went on a pooled VM connection."),
        ("evicted", "Pooled VM connections closed because the VM closed or sent unasked bytes."),
        ("stale", "Reused VM connections found closed before answering (request sent again)."),
    ):
        yield CounterMetricFamily(f"splice_upstream_{key}", doc, p.get(key, 0))


def _supervisor(sup: Mapping[str, Any] | None) -> Iterator[Metric]:
    if sup is None:
        return
    yield GaugeMetricFamily("splice_workers", "Worker processes serving now.", sup["workers"])
    yield CounterMetricFamily(
        "splice_worker_restarts", "Worker processes restarted after dying.", sup["restarts"]
    )
    pids = GaugeMetricFamily("splice_worker_pid", "Process id of each worker.", labels=["worker"])
    accepted = CounterMetricFamily(
        "splice_worker_connections_accepted",
        "Connections accepted by each worker process (since it started).",
        labels=["worker"],
    )
    for index, w in sorted(sup["each"].items(), key=lambda kv: int(kv[0])):
        pids.add_metric([str(index)], w["pid"])
        accepted.add_metric([str(index)], w["accepted"])
    yield pids
    yield accepted


def _gc(g: Mapping[str, Any] | None) -> Iterator[Metric]:
    """The collector's work, summed over workers (``splice.heap``)."""
    if g is None:
        return
    gen = ["generation"]
    for key, name, doc in (
        ("collections", "splice_gc_collections", "Garbage collections, per generation."),
        ("collected", "splice_gc_objects_collected", "Objects the collector freed."),
        ("seconds", "splice_gc_seconds", "Time spent in collections (the GIL held)."),
    ):
        fam = CounterMetricFamily(name, doc, labels=gen)
        for i, v in enumerate(g[key]):
            fam.add_metric([str(i)], v)
        yield fam
    yield GaugeMetricFamily(
        "splice_gc_frozen_objects",
        "Start-up objects frozen out of every collection.",
        g["frozen"],
    )


def render(snapshot: Mapping[str, Any]) -> bytes:
    """The Prometheus text exposition (format 0.0.4) of ``snapshot``."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector(snapshot))
    return generate_latest(registry)
