"""Resolvers tried in config order, behind one cache, one lookup in flight per name.

``cached`` is the hot path: leading synchronous resolvers (static) answer first, with no
cache, then a cache hit answers; no I/O, no coroutine. It raises a cached error and
returns None when ``resolve`` must be awaited. ``resolve`` shares one Task per name among
all its callers (single-flight). A resolver that is RESOLVER_UNAVAILABLE is skipped; if
no later one answers, the last good Endpoint is served for up to ``stale`` seconds past
its TTL, after that the RESOLVER_UNAVAILABLE error is raised. Nobody knowing the shed is
RouteError SHED_NOT_FOUND, cached for ``negative_ttl`` like every other error.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from typing import Final

from splice.errors import BackendError, RouteError, SpliceError
from splice.resolve.base import Endpoint, Resolver
from splice.resolve.cache import UNAVAILABLE, ResolveCache, copy_error

log: Final = logging.getLogger("splice.resolve")


class ResolverChain:
    def __init__(
        self,
        resolvers: Sequence[Resolver],
        *,
        ttl: float = 5.0,
        negative_ttl: float = 1.0,
        stale: float = 60.0,
        maxsize: int = 4096,
        timer: Callable[[], float] = time.monotonic,
    ) -> None:
        self.resolvers = tuple(resolvers)
        n_lead = next((i for i, r in enumerate(self.resolvers) if not r.synchronous), None)
        #: synchronous resolvers before the first one that does I/O: asked before the cache
        self._lead = self.resolvers if n_lead is None else self.resolvers[:n_lead]
        self._all_sync = n_lead is None
        self._cache = ResolveCache(
            ttl=ttl, negative_ttl=negative_ttl, stale=stale, maxsize=maxsize, timer=timer
        )
        self._flights: dict[str, asyncio.Task[Endpoint]] = {}
        #: answers from the cache (good or error), lookups awaited, answers served stale
        self.hits = 0
        self.misses = 0
        self.stale = 0

    def cached(self, shed: str) -> Endpoint | None:
        """An answer without I/O, or None when ``resolve`` must be awaited.

        Raises:
            RouteError, BackendError: a cached "no" (SHED_NOT_FOUND, SHED_NOT_RUNNING,
                RESOLVER_UNAVAILABLE), or SHED_NOT_FOUND when every resolver is synchronous.
        """
        for r in self._lead:
            ep = r.lookup_now(shed)
            if ep is not None:
                return ep
        if self._all_sync:
            raise _not_found(shed)
        hit = self._cache.get(shed)
        if hit is None:
            return None
        if hit.stale:
            self.stale += 1
        else:
            self.hits += 1
        if isinstance(hit.value, SpliceError):
            raise hit.value
        return hit.value

    async def resolve(self, shed: str) -> Endpoint:
        """The Endpoint for ``shed``, asking resolvers (once, however many callers) if needed.

        Raises:
            RouteError: SHED_NOT_FOUND when no resolver knows the shed.
            BackendError: SHED_NOT_RUNNING; RESOLVER_UNAVAILABLE past the stale window.
        """
        ep = self.cached(shed)
        if ep is not None:
            return ep
        self.misses += 1
        task = self._flights.get(shed)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._lookup(shed))
            self._flights[shed] = task
            task.add_done_callback(lambda t: self._landed(shed, t))
        try:
            # shield: one caller giving up must not cancel the lookup the others await
            return await asyncio.shield(task)
        except SpliceError as e:
            raise copy_error(e, shed) from None

    def invalidate(self, shed: str) -> None:
        """Forget ``shed`` (e.g. its cached address refused a connection)."""
        self._cache.invalidate(shed)

    def entries(self) -> list[tuple[str, Endpoint | str, float]]:
        """Cached answers for /routes: (shed, Endpoint or error code, age in seconds)."""
        return self._cache.entries()

    async def close(self, *, finish: bool = False) -> None:
        """Close the resolvers. Lookups in flight are cancelled, or with ``finish`` (a
        chain a reload replaced) first let land: connections waiting on them get their
        answer from the config they arrived under."""
        flights = list(self._flights.values())
        if not finish:
            for t in flights:
                t.cancel()
        await asyncio.gather(*flights, return_exceptions=True)
        for r in self.resolvers:
            await r.close()

    def _landed(self, shed: str, task: asyncio.Task[Endpoint]) -> None:
        if self._flights.get(shed) is task:
            del self._flights[shed]
        if not task.cancelled():
            task.exception()  # retrieved: no "never retrieved" warning if all waiters left

    async def _lookup(self, shed: str) -> Endpoint:
        try:
            ep, down = await self._walk(shed)
        except SpliceError as e:  # a resolver knows the shed and says no
            self._cache.put_error(shed, e)
            raise
        if ep is not None:
            self._cache.put(shed, ep)
            return ep
        if down is None:
            err: SpliceError = _not_found(shed)
        else:
            old = self._cache.last_good(shed)
            if old is not None:
                self.stale += 1
                self._cache.hold_stale(shed, old)
                log.warning("serving %s stale: %s", shed, down.message)
                return old
            err = down
        self._cache.put_error(shed, err)
        raise err

    async def _walk(self, shed: str) -> tuple[Endpoint | None, BackendError | None]:
        """The first answer in config order, and the first "unavailable" met on the way."""
        down: BackendError | None = None
        for r in self.resolvers:
            try:
                ep = r.lookup_now(shed) if r.synchronous else await r.resolve(shed)
            except BackendError as e:
                if e.code != UNAVAILABLE:
                    raise
                down = down or e
                continue
            except SpliceError:
                raise
            except Exception:  # a resolver bug must cost one lookup, not the server
                log.exception("resolver %s failed on %r", r.kind, shed)
                down = down or BackendError(f"Resolver {r.kind} failed.", code=UNAVAILABLE)
                continue
            if ep is not None:
                return ep, down
        return None, down


def _not_found(shed: str) -> RouteError:
    return RouteError(f"There is no shed named {shed!r}.", code="SHED_NOT_FOUND", shed=shed)
