"""Which IP addresses the egress gateway may dial: public ones, and what config allows.

``classify(ip)`` is None for a public address, else the name of the non-public range it
is in. IPv6 forms that carry an IPv4 address (IPv4-mapped, 6to4, NAT64 64:ff9b::/96,
Teredo) are classified as the IPv4 address they lead to, so ``::ffff:127.0.0.1`` and
``64:ff9b::7f00:1`` are both "loopback". Any IPv6 outside 2000::/3 (global unicast) is
not public. ``dialable(ip, allow_networks)`` lets config open named networks on purpose;
an allow network matches an IPv4-mapped address as its IPv4 form (same socket peer), but
never the 6to4/NAT64/Teredo forms (those are dialed through a translator, elsewhere).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _nets(*pairs: tuple[str, str]) -> tuple[tuple[Network, str], ...]:
    return tuple((ipaddress.ip_network(cidr), name) for cidr, name in pairs)


#: non-public IPv4 ranges (IANA special-purpose registry), most specific first. Only
#: globally reachable, routable unicast is public: documentation, benchmarking and the
#: IETF protocol block are refused too, since nothing legitimate lives there.
V4_RANGES = _nets(
    ("255.255.255.255/32", "broadcast"),  # limited broadcast
    ("0.0.0.0/8", "unspecified"),  # "this network"; Linux dials 0.0.0.0 as loopback
    ("10.0.0.0/8", "private"),  # RFC 1918
    ("100.64.0.0/10", "cgnat"),  # RFC 6598 shared address space
    ("127.0.0.0/8", "loopback"),
    ("169.254.0.0/16", "link-local"),  # holds 169.254.169.254, the cloud metadata service
    ("172.16.0.0/12", "private"),  # RFC 1918
    ("192.0.0.0/24", "ietf-protocol"),  # RFC 6890: DS-Lite, NAT64 discovery, ...
    ("192.0.2.0/24", "documentation"),  # TEST-NET-1
    ("192.88.99.0/24", "reserved"),  # deprecated 6to4 relay anycast (RFC 7526)
    ("192.168.0.0/16", "private"),  # RFC 1918
    ("198.18.0.0/15", "benchmarking"),  # RFC 2544
    ("198.51.100.0/24", "documentation"),  # TEST-NET-2
    ("203.0.113.0/24", "documentation"),  # TEST-NET-3
    ("224.0.0.0/4", "multicast"),
    ("240.0.0.0/4", "reserved"),  # class E
)

#: non-public IPv6 ranges inside 2000::/3 and the special ones outside it, most specific first
V6_RANGES = _nets(
    ("::/128", "unspecified"),
    ("::1/128", "loopback"),
    ("64:ff9b:1::/48", "nat64-local"),  # RFC 8215: local translators, layout not fixed
    ("100::/64", "reserved"),  # RFC 6666 discard-only
    ("2001::/23", "ietf-protocol"),  # ORCHID, benchmarking, ... (Teredo is handled apart)
    ("2001:db8::/32", "documentation"),
    ("3fff::/20", "documentation"),  # RFC 9637
    ("fc00::/7", "unique-local"),  # ULA
    ("fe80::/10", "link-local"),
    ("fec0::/10", "site-local"),  # deprecated, still routed locally by some stacks
    ("ff00::/8", "multicast"),
)

#: IPv4 embedded in the last 32 bits (RFC 6052 well-known prefix)
NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
#: global unicast: the only IPv6 space the Internet routes (the rest is reserved)
GLOBAL_UNICAST = ipaddress.IPv6Network("2000::/3")


def _embedded(ip: ipaddress.IPv6Address) -> tuple[ipaddress.IPv4Address, ...]:
    """The IPv4 addresses an IPv6 address leads to (none for plain IPv6)."""
    if ip.ipv4_mapped is not None:
        return (ip.ipv4_mapped,)
    if ip.sixtofour is not None:
        return (ip.sixtofour,)
    if ip.teredo is not None:
        return ip.teredo  # (server, client): the client is the one packets go to
    if ip in NAT64:
        return (ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF),)
    return ()


def classify(ip: Address) -> str | None:
    """None for a public address, else the name of its non-public range."""
    if isinstance(ip, ipaddress.IPv4Address):
        return next((name for net, name in V4_RANGES if ip in net), None)
    embedded = _embedded(ip)
    if embedded:
        return next((r for r in map(classify, embedded) if r is not None), None)
    name = next((name for net, name in V6_RANGES if ip in net), None)
    if name is None and ip not in GLOBAL_UNICAST:
        return "reserved"
    return name


def dialable(ip: Address, allow_networks: Iterable[Network]) -> str | None:
    """None when ``ip`` may be dialed, else the non-public range that forbids it."""
    problem = classify(ip)
    if problem is not None and allowed_by(ip, allow_networks) is not None:
        return None
    return problem


def allowed_by(ip: Address, allow_networks: Iterable[Network]) -> Network | None:
    """The first allow network holding ``ip`` (IPv4-mapped read as IPv4), or None."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return next((net for net in allow_networks if ip in net), None)
