"""A set of IP networks (CIDRs) that answers "is this peer in it?".

Used for ``allow_clients``, ``accept_proxy`` and ``trusted_fronts``. An IPv4-mapped
IPv6 peer (``::ffff:10.0.0.1``, as a dual-stack listener reports it) is checked as
the IPv4 address it is, so one rule covers both spellings.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class NetSet:
    __slots__ = ("_v4", "_v6")

    def __init__(self, cidrs: Iterable[str]) -> None:
        nets = [ipaddress.ip_network(c, strict=False) for c in cidrs]
        self._v4 = tuple(n for n in nets if n.version == 4)
        self._v6 = tuple(n for n in nets if n.version == 6)

    def __contains__(self, address: object) -> bool:
        """``address`` is an IP literal string (a scope id ``%eth0`` is ignored)."""
        if not isinstance(address, str):
            return False
        try:
            ip = ipaddress.ip_address(address.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address):
            if ip.ipv4_mapped is None:
                return any(ip in n for n in self._v6)
            ip = ip.ipv4_mapped
        return any(ip in n for n in self._v4)

    def __bool__(self) -> bool:
        return bool(self._v4 or self._v6)
