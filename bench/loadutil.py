"""Shared bits of the Python load clients: percentiles, bounded run, JSON out."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Coroutine, Sequence
from typing import Any


def percentile(sorted_vals: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile of an already sorted list (None when empty)."""
    if not sorted_vals:
        return None
    k = min(len(sorted_vals) - 1, max(0, round(q / 100 * len(sorted_vals) + 0.5) - 1))
    return sorted_vals[k]


def latency_summary(ns: list[int], prefix: str = "") -> dict[str, float | None]:
    """p50/p90/p99/max in milliseconds."""
    vals = sorted(ns)
    out: dict[str, float | None] = {}
    for q in (50, 90, 99):
        v = percentile(vals, q)
        out[f"{prefix}p{q}_ms"] = None if v is None else v / 1e6
    out[f"{prefix}max_ms"] = vals[-1] / 1e6 if vals else None
    return out


def run_main(coro: Coroutine[Any, Any, dict[str, Any]]) -> None:
    """Run on uvloop when present and print the result as one JSON line."""
    try:
        import uvloop

        result = uvloop.run(coro)
    except ImportError:
        result = asyncio.run(coro)
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()


def check_loopback(host: str) -> None:
    """The suite only ever talks to this machine."""
    if host not in ("127.0.0.1", "::1", "localhost"):
        raise SystemExit(f"refusing non-loopback target {host!r}")
