"""The resolver chain's memory: fresh answers, short-lived failures, last known good.

Two ``cachetools.TTLCache`` maps share one injected timer (tests move time by hand):
``good`` keeps each shed's last Endpoint for ``ttl + stale`` seconds (fresh for ``ttl``,
usable only as a stale fallback after that); ``short`` keeps errors and stale holds for
``negative_ttl``. A "no" (SHED_NOT_FOUND, SHED_NOT_RUNNING) forgets the good answer; a
RESOLVER_UNAVAILABLE keeps it, so it can be served stale. Errors are stored, never
raised: ``get`` hands out a fresh copy each time so tracebacks do not pile up.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

from cachetools import TTLCache

from splice.errors import SpliceError
from splice.resolve.base import Endpoint

#: the one failure that says nothing about the shed, only about the resolver
UNAVAILABLE = "RESOLVER_UNAVAILABLE"


class Hit(NamedTuple):
    """A cached answer: an Endpoint, or an error to raise; ``stale`` when past its TTL."""

    value: Endpoint | SpliceError
    stale: bool


class ResolveCache:
    def __init__(
        self,
        *,
        ttl: float,
        negative_ttl: float,
        stale: float,
        maxsize: int,
        timer: Callable[[], float],
    ) -> None:
        self.ttl = ttl
        self._timer = timer
        self._good: TTLCache[str, tuple[Endpoint, float]] = TTLCache(
            maxsize, ttl + stale, timer=timer
        )
        self._short: TTLCache[str, tuple[Endpoint | SpliceError, float]] = TTLCache(
            maxsize, negative_ttl, timer=timer
        )

    def get(self, shed: str) -> Hit | None:
        """The answer to give without asking anyone, or None when a lookup is due."""
        short = self._short.get(shed)
        if short is not None:
            value = short[0]
            if isinstance(value, SpliceError):
                return Hit(copy_error(value, shed), stale=False)
            if shed in self._good:  # a stale hold ends with the stale window
                return Hit(value, stale=True)
            del self._short[shed]
        good = self._good.get(shed)
        if good is not None and self._timer() - good[1] < self.ttl:
            return Hit(good[0], stale=False)
        return None

    def last_good(self, shed: str) -> Endpoint | None:
        """The last good Endpoint while still inside ``ttl + stale``, fresh or not."""
        good = self._good.get(shed)
        return None if good is None else good[0]

    def put(self, shed: str, endpoint: Endpoint) -> None:
        self._short.pop(shed, None)
        self._good[shed] = (endpoint, self._timer())

    def put_error(self, shed: str, error: SpliceError) -> None:
        if error.code != UNAVAILABLE:
            self._good.pop(shed, None)
        self._short[shed] = (error, self._timer())

    def hold_stale(self, shed: str, endpoint: Endpoint) -> None:
        """Serve ``endpoint`` stale for ``negative_ttl`` without asking again."""
        self._short[shed] = (endpoint, self._timer())

    def invalidate(self, shed: str) -> None:
        self._good.pop(shed, None)
        self._short.pop(shed, None)

    def entries(self) -> list[tuple[str, Endpoint | str, float]]:
        """(shed, Endpoint or error code, age in seconds), sorted by shed."""
        now = self._timer()
        self._good.expire()
        self._short.expire()
        out: dict[str, tuple[str, Endpoint | str, float]] = {}
        for shed, (ep, at) in list(self._good.items()):
            out[shed] = (shed, ep, now - at)
        for shed, (value, at) in list(self._short.items()):
            if isinstance(value, SpliceError):  # a stale hold keeps its good answer's age
                out[shed] = (shed, value.code, now - at)
        return [out[k] for k in sorted(out)]


def copy_error(error: SpliceError, shed: str | None = None) -> SpliceError:
    """A new exception equal to ``error`` (same class, code, message, ports)."""
    return type(error)(
        error.message,
        code=error.code,
        shed=error.shed or shed,
        port=error.port,
        ports=error.ports,
    )
