"""Static resolver: shed addresses written in the config (``[sheds.NAME] address``)."""

from __future__ import annotations

from collections.abc import Mapping

from splice.resolve.base import Endpoint


class StaticResolver:
    kind = "static"
    synchronous = True

    def __init__(self, addresses: Mapping[str, str]) -> None:
        self._endpoints = {
            name: Endpoint(shed=name, address=addr, source=self.kind)
            for name, addr in addresses.items()
        }

    def lookup_now(self, shed: str) -> Endpoint | None:
        return self._endpoints.get(shed)

    async def resolve(self, shed: str) -> Endpoint | None:
        return self._endpoints.get(shed)

    async def close(self) -> None:
        return None

    def names(self) -> list[str]:
        return sorted(self._endpoints)
