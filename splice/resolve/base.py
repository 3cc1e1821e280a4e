"""The resolver contract: a shed name in, an ``Endpoint`` (or "not mine") out.

Resolvers are chained in config order; the first that knows a shed answers. A
resolver returns ``None`` for a shed it does not know (the chain goes on), and
raises ``RouteError``/``BackendError`` for a shed it knows but cannot serve
(stopped, API down past the stale window). The hot path never awaits on a cache
hit: ``ResolverChain.cached`` answers synchronously or says "ask".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where a running shed can be reached."""

    shed: str
    #: IP literal for direct dialing (Firecracker bridge); None when only the Connect API reaches it
    address: str | None
    status: str = "running"
    #: which resolver answered (for logs and /routes)
    source: str = ""


class Resolver(Protocol):
    """A source of shed addresses."""

    #: the name used in ``[resolver] chain``
    kind: str
    #: True when ``lookup_now`` is the whole answer (no I/O, ever): static config
    synchronous: bool

    def lookup_now(self, shed: str) -> Endpoint | None:
        """The answer without I/O; only meaningful when ``synchronous`` is True."""
        ...

    async def resolve(self, shed: str) -> Endpoint | None:
        """Answer, doing I/O if needed. None means this source does not know the shed."""
        ...

    async def close(self) -> None:
        """Release connections and watchers."""
        ...
