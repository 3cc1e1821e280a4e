"""Resolvers tried in config order, behind one cache.

``cached`` is the hot path: synchronous resolvers (static) and cache hits answer
at once, with no I/O and no coroutine. Only a miss goes through ``resolve``.
"""

from __future__ import annotations

from collections.abc import Sequence

from splice.errors import RouteError
from splice.resolve.base import Endpoint, Resolver


class ResolverChain:
    def __init__(self, resolvers: Sequence[Resolver]) -> None:
        self.resolvers = tuple(resolvers)

    def cached(self, shed: str) -> Endpoint | None:
        """An answer without I/O, or None when ``resolve`` must be awaited.

        Raises:
            RouteError: SHED_NOT_FOUND when every resolver is synchronous and none knows it.
        """
        for r in self.resolvers:
            if not r.synchronous:
                return None
            ep = r.lookup_now(shed)
            if ep is not None:
                return ep
        raise RouteError(f"There is no shed named {shed!r}.", code="SHED_NOT_FOUND", shed=shed)

    async def resolve(self, shed: str) -> Endpoint:
        for r in self.resolvers:
            ep = await r.resolve(shed)
            if ep is not None:
                return ep
        raise RouteError(f"There is no shed named {shed!r}.", code="SHED_NOT_FOUND", shed=shed)

    async def close(self) -> None:
        for r in self.resolvers:
            await r.close()
