"""The egress destination policy: which (host, port) a client may reach, and which address.

``ForwardPolicy.decide`` matches the canonical host text (authority.normalise_host) against
host patterns: ``name``, ``*.suffix`` (one or more labels under suffix, not suffix itself),
``*`` (anything), an IP literal, each with an optional ``:port``. Deny wins over allow; a
deny pattern without a port denies every port; an allow pattern without a port allows the
``ports`` list; an empty allow list allows any host on ``ports``. The first per-client
policy whose ``clients`` holds the peer or whose ``users`` names the proxy user replaces
the top-level allow/deny lists. ``check_address`` is the second gate, on every address
actually dialed: non-public ranges are refused unless ``allow_networks`` holds them.
``denied_address`` holds a deny pattern that is an IP literal to every address dialled
too, not only to the spelling the client wrote: ``deny = ["127.0.0.1"]`` refuses
``localhost``, a name whose DNS answer or ``hosts`` entry is 127.0.0.1, as it refuses
``127.1``. An IPv4 address in the NAT64 well-known prefix (``64:ff9b::/96``) is compared
as that IPv4 address, as IPv4-mapped ones already are (it is where the packets go).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, NamedTuple

from splice.egress.addresses import NAT64, Address, Network, allowed_by, classify
from splice.egress.authority import normalise_host, parse_ip_literal, parse_port, split_host_port
from splice.egress.passwords import is_password_hash
from splice.errors import ConfigError, ProtocolError

#: destination ports a pattern without ``:port`` allows when config names none: HTTP and HTTPS
DEFAULT_PORTS = frozenset({80, 443})
#: seconds to wait for a destination to accept when config names none
DEFAULT_CONNECT_TIMEOUT = 5.0
#: a connect timeout above this is a typo (and TOML's ``inf`` would hang a client forever)
MAX_CONNECT_TIMEOUT = 600.0
#: keys of the ``[forward]`` table this module reads; any other key is a config error
FORWARD_KEYS = frozenset(
    {"allow", "deny", "ports", "allow_networks", "hosts", "connect_timeout", "users", "policies"}
)
#: keys of one ``[[forward.policies]]`` table
POLICY_KEYS = frozenset({"clients", "users", "allow", "deny"})


class Decision(NamedTuple):
    allowed: bool
    #: DESTINATION_DENIED, PORT_DENIED or PRIVATE_ADDRESS when refused
    code: str | None
    #: what decided: the pattern as written, "ports", "default", a range name or a CIDR
    rule: str


@dataclass(frozen=True, slots=True)
class Pattern:
    """One host pattern; ``suffix`` is set for wildcards ("" for ``*``), else ``name``."""

    text: str
    name: str | None = None
    suffix: str | None = None
    port: int | None = None
    #: the address an IP-literal pattern names, as ``denied_address`` compares it
    address: Address | None = field(default=None, compare=False)

    @classmethod
    def parse(cls, text: str) -> Pattern:
        """Raises ProtocolError when ``text`` is not a pattern."""
        host, port_text = split_host_port(text)
        port = None if port_text is None else parse_port(port_text)
        if host == "*":
            return cls(text, suffix="", port=port)
        if not host.startswith("*."):
            ip = parse_ip_literal(host)
            address = None if ip is None else compared_address(ip)
            return cls(text, name=normalise_host(host), port=port, address=address)
        if parse_ip_literal(host[2:]) is not None:
            raise ProtocolError("A wildcard needs a name after '*.', not an address.")
        return cls(text, suffix="." + normalise_host(host[2:]), port=port)

    def covers(self, host: str) -> bool:
        """Whether the canonical ``host`` matches, whatever the port."""
        return host == self.name if self.suffix is None else host.endswith(self.suffix)


@dataclass(frozen=True, slots=True)
class Rules:
    allow: tuple[Pattern, ...] = ()
    deny: tuple[Pattern, ...] = ()


@dataclass(frozen=True, slots=True)
class ClientPolicy:
    clients: tuple[Network, ...]
    users: frozenset[str]
    rules: Rules


@dataclass(frozen=True, slots=True)
class ForwardPolicy:
    rules: Rules = Rules()
    ports: frozenset[int] = DEFAULT_PORTS
    allow_networks: tuple[Network, ...] = ()
    #: canonical name -> the address to dial instead of asking DNS (written by the admin)
    hosts: Mapping[str, Address] = field(default_factory=lambda: MappingProxyType({}))
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    #: user -> password hash; empty means no proxy authentication
    users: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    policies: tuple[ClientPolicy, ...] = ()

    def rules_for(self, client_ip: str, user: str | None) -> Rules:
        """The first per-client policy's rules for this peer or user, else the top-level ones."""
        ip = _peer(client_ip)
        for policy in self.policies:
            if user is not None and user in policy.users:
                return policy.rules
            if ip is not None and allowed_by(ip, policy.clients) is not None:
                return policy.rules
        return self.rules

    def decide(self, host: str, port: int, *, client_ip: str, user: str | None) -> Decision:
        """Whether the client may reach ``host``:``port``. Raises ProtocolError for a bad host."""
        name = normalise_host(host)
        rules = self.rules_for(client_ip, user)
        for p in rules.deny:
            if p.port in (None, port) and p.covers(name):
                return Decision(False, "DESTINATION_DENIED", p.text)
        if not rules.allow:
            if port in self.ports:
                return Decision(True, None, "default")
            return Decision(False, "PORT_DENIED", "ports")
        named = False
        for p in rules.allow:
            if p.covers(name):
                if p.port == port or (p.port is None and port in self.ports):
                    return Decision(True, None, p.text)
                named = True
        if named:
            return Decision(False, "PORT_DENIED", "ports")
        return Decision(False, "DESTINATION_DENIED", "default")

    def denied_address(
        self, ip: Address, port: int, *, client_ip: str | None, user: str | None
    ) -> Decision | None:
        """The refusal of dialling ``ip``:``port`` by an IP-literal deny pattern, or None.

        ``decide`` sees the name as the client wrote it; this sees the address that name
        resolved or is mapped to, so the admin's "never this address" holds whatever the
        spelling. ``client_ip`` None, a caller that cannot say who asks, is held to every
        deny list (refusing too much rather than dialling what one of them denies).
        """
        wanted = compared_address(ip)
        if client_ip is None:
            lists = (self.rules, *(c.rules for c in self.policies))
        else:
            lists = (self.rules_for(client_ip, user),)
        for rules in lists:
            for p in rules.deny:
                if p.address == wanted and p.port in (None, port):
                    return Decision(False, "DESTINATION_DENIED", p.text)
        return None

    def check_address(self, ip: Address | str) -> Decision:
        """``check_address`` with this policy's ``allow_networks``."""
        return check_address(ip, self.allow_networks)

    def static_address(self, host: str) -> Address | None:
        """The ``hosts`` entry for ``host`` (dial it as is: the admin chose it), or None."""
        return self.hosts.get(normalise_host(host))


def check_address(ip: Address | str, allow_networks: Iterable[Network]) -> Decision:
    """Whether ``ip`` may be dialed; refused with PRIVATE_ADDRESS and the range's name."""
    if isinstance(ip, str):
        try:
            ip = ipaddress.ip_address(ip)
        except ValueError:
            return Decision(False, "PRIVATE_ADDRESS", "invalid")
    problem = classify(ip)
    if problem is None:
        return Decision(True, None, "public")
    net = allowed_by(ip, allow_networks)
    if net is not None:
        return Decision(True, None, str(net))
    return Decision(False, "PRIVATE_ADDRESS", problem)


def compared_address(ip: Address) -> Address:
    """``ip`` as deny patterns see it: an IPv4-mapped or NAT64 (64:ff9b::/96) address is
    the IPv4 address it leads to, so no IPv6 spelling slips past an IPv4 pattern."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return ip.ipv4_mapped
        if ip in NAT64:
            return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return ip


def _peer(client_ip: str) -> Address | None:
    try:
        return ipaddress.ip_address(client_ip.split("%", 1)[0])
    except ValueError:
        return None


def parse_forward_section(data: Mapping[str, Any]) -> ForwardPolicy:
    """Validate a ``[forward]`` table. Raises ConfigError naming the bad key."""
    _no_unknown("forward", data, FORWARD_KEYS)
    users = _users(_table(data, "users", "forward"))
    timeout = data.get("connect_timeout", DEFAULT_CONNECT_TIMEOUT)
    ok = isinstance(timeout, int | float) and not isinstance(timeout, bool)
    if not ok or not 0 < timeout <= MAX_CONNECT_TIMEOUT:
        raise ConfigError("forward.connect_timeout", f"{timeout!r} must be 0 < seconds <= 600")
    return ForwardPolicy(
        rules=_rules("forward", data),
        ports=frozenset(_port(k, v) for k, v in _items(data, "ports", "forward", DEFAULT_PORTS)),
        allow_networks=_networks(data, "allow_networks", "forward"),
        hosts=MappingProxyType(_hosts(_table(data, "hosts", "forward"))),
        connect_timeout=float(timeout),
        users=MappingProxyType(users),
        policies=tuple(_client_policy(k, v, users) for k, v in _items(data, "policies", "forward")),
    )


def _client_policy(key: str, v: Any, users: Mapping[str, str]) -> ClientPolicy:
    if not isinstance(v, Mapping):
        raise ConfigError(key, "must be a table with clients and/or users, allow and deny")
    _no_unknown(key, v, POLICY_KEYS)
    names = []
    for k, name in _items(v, "users", key):
        if not isinstance(name, str) or name not in users:
            raise ConfigError(k, f"{name!r} is not a user in forward.users")
        names.append(name)
    clients = _networks(v, "clients", key)
    if not clients and not names:
        raise ConfigError(key, "give clients (CIDRs) or users to say whom it applies to")
    return ClientPolicy(clients, frozenset(names), _rules(key, v))


def _rules(key: str, v: Mapping[str, Any]) -> Rules:
    return Rules(
        allow=tuple(_pattern(k, p) for k, p in _items(v, "allow", key)),
        deny=tuple(_pattern(k, p) for k, p in _items(v, "deny", key)),
    )


def _pattern(key: str, v: Any) -> Pattern:
    example = "'*.debian.org', 'pypi.org' or 'github.com:443'"
    problem = f"{v!r} is not a host pattern such as {example}"
    if not isinstance(v, str):
        raise ConfigError(key, problem)
    try:
        return Pattern.parse(v)
    except ProtocolError:
        raise ConfigError(key, problem) from None


def _users(table: Mapping[str, Any]) -> dict[str, str]:
    for user, encoded in table.items():
        key = f"forward.users.{user}"
        if not user or ":" in user or not user.isprintable():
            raise ConfigError(key, "a user name must be printable and have no ':'")
        if not isinstance(encoded, str) or not is_password_hash(encoded):
            raise ConfigError(key, "must be a password hash made by `splice passwd`")
    return dict(table)


def _hosts(table: Mapping[str, Any]) -> dict[str, Address]:
    hosts: dict[str, Address] = {}
    for name, address in table.items():
        key = f"forward.hosts.{name}"
        try:
            literal = parse_ip_literal(name)
            ip = ipaddress.ip_address(address if isinstance(address, str) else "")
        except (ProtocolError, ValueError):
            raise ConfigError(key, f"needs a host name = an IP address, not {address!r}") from None
        if literal is not None:
            raise ConfigError(key, "must be a host name, not an address")
        mapped = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) else None
        hosts[normalise_host(name)] = ip if mapped is None else mapped
    return hosts


def _networks(v: Mapping[str, Any], k: str, key: str) -> tuple[Network, ...]:
    nets = []
    for where, cidr in _items(v, k, key):
        try:
            nets.append(ipaddress.ip_network(cidr if isinstance(cidr, str) else ""))
        except ValueError:
            problem = f"{cidr!r} is not a CIDR with no host bits set, e.g. '10.88.0.0/24'"
            raise ConfigError(where, problem) from None
    return tuple(nets)


def _port(key: str, v: Any) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or not 0 < v < 65536:
        raise ConfigError(key, f"{v!r} is not a port number (1-65535)")
    return v


def _items(
    v: Mapping[str, Any], k: str, key: str, default: Iterable[Any] = ()
) -> list[tuple[str, Any]]:
    """``(key[i], item)`` for the list at ``v[k]``."""
    x = v.get(k, list(default))
    if not isinstance(x, list):
        raise ConfigError(f"{key}.{k}", "must be a list")
    return [(f"{key}.{k}[{i}]", item) for i, item in enumerate(x)]


def _table(v: Mapping[str, Any], k: str, key: str) -> Mapping[str, Any]:
    x = v.get(k, {})
    if not isinstance(x, Mapping):
        raise ConfigError(f"{key}.{k}", "must be a table")
    return x


def _no_unknown(key: str, v: Mapping[str, Any], allowed: frozenset[str]) -> None:
    for k in v:
        if k not in allowed:
            raise ConfigError(f"{key}.{k}", f"unknown key (known: {', '.join(sorted(allowed))})")
