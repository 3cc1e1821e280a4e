"""Host name -> shed name and port, by the public naming rules.

A Host ``LABEL.<base>`` (case-insensitive, one trailing dot allowed, ``:port`` ignored)
names a shed when ``<base>`` is a configured domain and ``LABEL`` is one DNS label:
``NAME``, ``PORT-NAME`` (canonical: a name starts with a letter, so a leading number is a
port) or ``NAME-PORT`` (ambiguous: ``web-2`` is a valid name, so the exact name wins and the
split is returned as ``alt``). Errors: a broken Host is ProtocolError BAD_REQUEST; a host
that is not ours (or an IP literal, or a bare base domain) is RouteError UNKNOWN_HOST; a
bad label under our domain is RouteError SHED_NOT_FOUND or INVALID_PORT.
"""

from __future__ import annotations

import re
from typing import Final, NamedTuple

from splice.errors import ProtocolError, RouteError

#: shed's own limit on a name (and DNS's limit on a label)
MAX_NAME: Final = 63

#: shed grammar: ^[a-z][a-z0-9-]*[a-z0-9]$ | ^[a-z]$, at most MAX_NAME chars ("--" checked apart)
_SHED_NAME: Final = re.compile(r"[a-z](?:[a-z0-9-]{0,61}[a-z0-9])?")
#: a port as written in names and paths: 1..65535 without leading zeros (range checked apart)
_PORT: Final = re.compile(r"[1-9][0-9]{0,4}")
#: PORT-NAME: everything before the first hyphen must be the port
_PORT_NAME: Final = re.compile(r"([0-9]+)-(.*)")
#: NAME-PORT: the port is after the last hyphen
_NAME_PORT: Final = re.compile(r"(.+)-([1-9][0-9]{0,4})")
#: the common case in one match, on the lower-cased Host: label "." rest ["."] [":" digits]
_FAST: Final = re.compile(rb"([a-z0-9-]{1,63})\.([a-z0-9.-]*[a-z0-9])\.?(?::[0-9]{0,5})?")
#: visible ASCII only: rejects control characters, spaces and non-ASCII in one pass
_VISIBLE: Final = re.compile(rb"[\x21-\x7e]+")
#: RFC 3986 reg-name (unreserved / pct-encoded / sub-delims); "@", "/", "\" etc. are not in it
_REG_NAME: Final = re.compile(r"[a-z0-9._~%!$&'()*+,;=-]+")
#: RFC 3986 port = *DIGIT; more than five digits is never a port
_HOST_PORT: Final = re.compile(r"[0-9]{0,5}")
#: "[" IPv6 / IPvFuture "]" [":" port]; the content only has to look like an address
_IP_LITERAL: Final = re.compile(r"\[[0-9a-z:.%_~-]+\](?::[0-9]{0,5})?")
#: digits and dots only: an IPv4 address in any of the forms resolvers accept
_IPV4ISH: Final = re.compile(r"[0-9.]+")


class HostName(NamedTuple):
    """A parsed Host: try ``shed`` (with ``port``) first, then ``alt`` if ``shed`` is unknown."""

    shed: str
    port: int | None
    alt: tuple[str, int] | None


def is_shed_name(s: str) -> bool:
    return _SHED_NAME.fullmatch(s) is not None and "--" not in s


def parse_port(s: str) -> int | None:
    if _PORT.fullmatch(s) is None:
        return None
    port = int(s)
    return port if port <= 65535 else None


def canonical_label(shed: str, port: int | None) -> str:
    return shed if port is None else f"{port}-{shed}"


def parse_host(host: bytes, domains: tuple[str, ...]) -> HostName:
    """Parse a Host header value (or an absolute-form authority) against the base domains.

    Raises:
        ProtocolError: BAD_REQUEST for a Host that breaks the URI host syntax.
        RouteError: UNKNOWN_HOST, SHED_NOT_FOUND or INVALID_PORT (see the module doc).
    """
    m = _FAST.fullmatch(host.lower())
    if m is not None:
        label = m[1].decode("ascii")
        rest = m[2].decode("ascii")
        if rest in domains and f"{label}.{rest}" not in domains:
            return _parse_label(label)
    return _parse_label(_label_of(host, domains))


def _label_of(host: bytes, domains: tuple[str, ...]) -> str:
    """The label before a base domain, or the error that explains why there is none."""
    if not host:
        raise ProtocolError("The Host header is empty.")
    if _VISIBLE.fullmatch(host) is None:
        raise ProtocolError("The Host header has control, space or non-ASCII characters.")
    text = host.decode("ascii").lower()
    if text.startswith("["):
        if _IP_LITERAL.fullmatch(text) is None:
            raise ProtocolError("The Host header has a malformed IP literal.")
        raise RouteError("IP addresses are not served here; use a shed name.", code="UNKNOWN_HOST")
    name, colon, port = text.partition(":")
    if colon and _HOST_PORT.fullmatch(port) is None:
        raise ProtocolError("The Host header has a malformed port.")
    if _REG_NAME.fullmatch(name) is None:
        raise ProtocolError("The Host header is not a valid host name.")
    if name.endswith("."):
        name = name[:-1]
    if _IPV4ISH.fullmatch(name) is not None:
        raise RouteError("IP addresses are not served here; use a shed name.", code="UNKNOWN_HOST")
    base = max((d for d in domains if name.endswith("." + d)), key=len, default=None)
    if base is None or name in domains:
        raise RouteError(code="UNKNOWN_HOST")
    return name[: -len(base) - 1]


def _parse_label(label: str) -> HostName:
    if len(label) > MAX_NAME:
        raise RouteError(f"{_shown(label)} is longer than {MAX_NAME} characters.")
    if is_shed_name(label):
        m = _NAME_PORT.fullmatch(label)
        # m[1] is a valid name whenever the label is: same first letter, no "--", ends in [a-z0-9]
        if m is not None and (alt_port := parse_port(m[2])) is not None:
            return HostName(label, None, (m[1], alt_port))
        return HostName(label, None, None)
    m = _PORT_NAME.fullmatch(label)
    if m is None:
        raise RouteError(f"{_shown(label)} is not a valid shed name.")
    port = parse_port(m[1])
    if port is None:
        raise RouteError(
            f"{_shown(m[1])} is not a valid port (1-65535, no leading zeros).",
            code="INVALID_PORT",
        )
    if not is_shed_name(m[2]):
        raise RouteError(f"{_shown(m[2])} is not a valid shed name.")
    return HostName(m[2], port, None)


def _shown(text: str) -> str:
    """Quote user text for a message, cut short so a huge label cannot bloat the page."""
    return repr(text if len(text) <= 80 else text[:77] + "...")
