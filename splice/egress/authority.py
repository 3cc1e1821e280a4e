"""Destination names and authorities, as the client wrote them, to one canonical text.

``normalise_host`` maps a host to the one spelling policy matches and the engine dials:
a DNS name in lower-case ASCII (IDNA 2003 punycode, one trailing dot dropped), or an IP
literal as ``str(ipaddress)`` (IPv6 without brackets, IPv4-mapped IPv6 as plain IPv4).
IPv4 is read with inet_aton/WHATWG rules (``127.1``, ``0x7f.1``, ``0177.0.0.1``,
``2130706433``), because that is what libc would connect to; a name whose last label is
numeric is an IPv4 literal or an error, never something to ask DNS about.
Every malformed input raises ``ProtocolError`` (BAD_REQUEST, or INVALID_PORT), nothing else.
"""

from __future__ import annotations

import ipaddress
import re

from splice.errors import ProtocolError

Address = ipaddress.IPv4Address | ipaddress.IPv6Address

#: DNS's limit on a name in text form without the trailing dot (RFC 1035 255 octets on the wire)
MAX_NAME = 253
#: input longer than this is refused before any IDNA work; IDNA output is checked against MAX_NAME
MAX_INPUT = 1024
#: one label after IDNA: letters, digits, inner hyphens; "_" because real hosts use it
_LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?")
#: a last label that looks like a number (WHATWG "ends in a number"): decimal or 0x-hex
_NUMERIC = re.compile(r"[0-9]+|0x[0-9a-f]*")
#: an inet_aton part: 0x-hex (may be empty), 0-octal, or decimal
_HEX, _OCTAL, _DECIMAL = re.compile(r"0x([0-9a-f]*)"), re.compile(r"0[0-7]*"), re.compile(r"[0-9]+")
#: a port as written after ":"; five digits at most, range checked apart
_PORT = re.compile(r"[0-9]{1,5}")


def _bad(what: str) -> ProtocolError:
    return ProtocolError(f"Bad destination host: {what}.")


def _ascii(host: str) -> str:
    """Lower-case ASCII form with IDNA applied and one trailing dot dropped."""
    if not host or len(host) > MAX_INPUT:
        raise _bad("empty or too long")
    try:
        if not host.isascii():
            host = host.encode("idna").decode("ascii")
        host = host.lower()
        if "xn--" in host:
            # punycode must decode and round-trip, so each name has exactly one spelling
            host.encode("ascii").decode("idna")
    except (UnicodeError, ValueError):
        raise _bad("not a valid international name") from None
    return host[:-1] if host.endswith(".") else host


def _aton_part(part: str) -> int:
    if m := _HEX.fullmatch(part):
        return int(m[1] or "0", 16)
    if _OCTAL.fullmatch(part):
        return int(part, 8)
    if part[:1] != "0" and _DECIMAL.fullmatch(part):
        return int(part)
    raise _bad("not a valid IPv4 address")


def _parse_ipv4(text: str) -> ipaddress.IPv4Address:
    """inet_aton: 1-4 parts, the last fills the remaining bytes."""
    parts = text.split(".")
    if len(parts) > 4:
        raise _bad("not a valid IPv4 address")
    *head, last = (_aton_part(p) for p in parts)
    if any(v > 255 for v in head) or last >= 1 << (8 * (4 - len(head))):
        raise _bad("not a valid IPv4 address")
    return ipaddress.IPv4Address(sum(v << (8 * (3 - i)) for i, v in enumerate(head)) + last)


def _parse_ipv6(text: str) -> Address:
    if "%" in text or len(text) > 45:  # a zone would pick an interface: never the client's call
        raise _bad("not a valid IPv6 address")
    try:
        ip = ipaddress.IPv6Address(text)
    except ValueError:
        raise _bad("not a valid IPv6 address") from None
    return ip if ip.ipv4_mapped is None else ip.ipv4_mapped


def _canonical(host: str) -> str | Address:
    """A valid DNS name (str), or the address an IP literal stands for."""
    if host.startswith("["):
        if not host.endswith("]"):
            raise _bad("unclosed bracket")
        return _parse_ipv6(host[1:-1])
    if ":" in host:
        return _parse_ipv6(host)
    name = _ascii(host)
    labels = name.split(".")
    if _NUMERIC.fullmatch(labels[-1]):
        return _parse_ipv4(name)
    if len(name) > MAX_NAME or not all(_LABEL.fullmatch(label) for label in labels):
        raise _bad("not a valid host name")
    return name


def parse_ip_literal(host: str) -> Address | None:
    """The address ``host`` spells in any form, or None for a valid DNS name.

    Raises:
        ProtocolError: BAD_REQUEST when ``host`` is neither a valid name nor a valid literal.
    """
    result = _canonical(host)
    return None if isinstance(result, str) else result


def normalise_host(host: str) -> str:
    """The canonical text of a name or IP literal (see the module doc). Idempotent.

    Raises:
        ProtocolError: BAD_REQUEST for anything else.
    """
    return str(_canonical(host))


def parse_authority(authority: bytes, default_port: int | None) -> tuple[str, int]:
    """``host[:port]`` or ``[v6][:port]`` (UTF-8) -> (canonical host, port).

    ``default_port`` None means the port is required (CONNECT). Userinfo is refused.

    Raises:
        ProtocolError: BAD_REQUEST for a bad host or userinfo, INVALID_PORT for a bad port.
    """
    try:
        text = authority.decode("utf-8")
    except UnicodeDecodeError:
        raise _bad("not UTF-8") from None
    if "@" in text:
        raise _bad("user information is not allowed")
    host, port_text = split_host_port(text)
    if port_text is None:
        if default_port is None:
            raise ProtocolError("The destination needs a port.", code="INVALID_PORT")
        return normalise_host(host), default_port
    return normalise_host(host), parse_port(port_text)


def render_authority(host: str, port: int, default_port: int) -> bytes:
    """``parse_authority`` the other way: canonical ``host`` (IPv6 bracketed) and
    ``port``, left out when it is ``default_port``; what a Host field names."""
    shown = f"[{host}]" if ":" in host else host
    return (shown if port == default_port else f"{shown}:{port}").encode("ascii")


def split_host_port(text: str) -> tuple[str, str | None]:
    """Split at the port colon; a bare IPv6 literal (many colons) is refused."""
    if text.startswith("["):
        close = text.find("]")
        rest = text[close + 1 :]
        if close < 0 or (rest and not rest.startswith(":")):
            raise _bad("bad IPv6 literal")
        return text[: close + 1], rest[1:] if rest else None
    host, colon, port = text.partition(":")
    if ":" in port:
        raise _bad("an IPv6 literal needs brackets")
    return host, port if colon else None


def parse_port(text: str) -> int:
    """A decimal port 1-65535. Raises ProtocolError INVALID_PORT otherwise."""
    if _PORT.fullmatch(text) is None or not 0 < int(text) < 65536:
        raise ProtocolError(f"Bad destination port {text[:8]!r}.", code="INVALID_PORT")
    return int(text)
