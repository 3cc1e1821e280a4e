"""Name -> addresses for the egress gateway, resolved once and cached (cachetools).

The forward proxy checks every address a name resolves to and then dials one of
those very addresses: there is no second lookup for an attacker's DNS to answer
differently (DNS rebinding). Answers live ``ttl`` seconds, failures
``negative_ttl``; one lookup is in flight per name however many connections wait.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable

from cachetools import TTLCache

from splice.errors import BackendError

#: getaddrinfo gives no TTL; 30 s keeps a build's many fetches from re-resolving
#: while a moved host is picked up within half a minute
TTL = 30.0
#: a failing name is retried after this long
NEGATIVE_TTL = 5.0
#: names remembered at once
MAXSIZE = 4096
#: a resolver that has not answered in this long is not going to; don't hold the client
LOOKUP_TIMEOUT = 5.0


class DnsCache:
    def __init__(
        self,
        *,
        ttl: float = TTL,
        negative_ttl: float = NEGATIVE_TTL,
        maxsize: int = MAXSIZE,
        timer: Callable[[], float] = time.monotonic,
    ) -> None:
        self._good: TTLCache[str, tuple[str, ...]] = TTLCache(maxsize, ttl, timer=timer)
        self._bad: TTLCache[str, str] = TTLCache(maxsize, negative_ttl, timer=timer)
        self._flights: dict[str, asyncio.Task[tuple[str, ...]]] = {}
        self.hits = 0
        self.misses = 0

    def cached(self, name: str) -> tuple[str, ...] | None:
        """Addresses without I/O, or None. Raises BackendError DNS_FAILED if that is cached."""
        addrs = self._good.get(name)
        if addrs is not None:
            self.hits += 1
            return addrs
        problem = self._bad.get(name)
        if problem is not None:
            self.hits += 1
            raise _failed(name, problem)
        return None

    async def resolve(self, name: str) -> tuple[str, ...]:
        addrs = self.cached(name)
        if addrs is not None:
            return addrs
        task = self._flights.get(name)
        if task is None:
            self.misses += 1
            task = asyncio.get_running_loop().create_task(self._lookup(name))
            self._flights[name] = task
            task.add_done_callback(lambda _t: self._flights.pop(name, None))
        return await asyncio.shield(task)

    async def _lookup(self, name: str) -> tuple[str, ...]:
        loop = asyncio.get_running_loop()
        try:
            infos = await asyncio.wait_for(
                loop.getaddrinfo(name, None, type=socket.SOCK_STREAM), LOOKUP_TIMEOUT
            )
        except (OSError, UnicodeError, TimeoutError) as e:
            problem = getattr(e, "strerror", None) or str(e) or "timed out"
            self._bad[name] = problem
            raise _failed(name, problem) from None
        addrs = tuple(dict.fromkeys(str(info[4][0]) for info in infos))
        self._good[name] = addrs
        return addrs


def _failed(name: str, problem: str) -> BackendError:
    return BackendError(f"{name} could not be resolved: {problem}", code="DNS_FAILED")
