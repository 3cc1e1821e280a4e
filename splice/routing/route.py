"""Request target -> the port to dial and the target to forward.

A path prefix ``/port/N`` picks port N when the Host label names no port; it is then
stripped (``/port/N/x?y`` -> ``/x?y``, ``/port/N`` and ``/port/N?q`` -> ``/`` and ``/?q``).
When the label names a port, the label wins and the target is forwarded untouched. The
prefix must be a whole segment of plain digits (no percent-decoding); N outside 1..65535
or with leading zeros is INVALID_PORT. In an absolute-form target (``http://host/port/N/x``)
only the path is rewritten; every other byte is kept. Only http and https absolute-forms
without userinfo are accepted. The port is then checked by ``ShedPolicy.pick_port``.
"""

from __future__ import annotations

import re
from typing import Final, NamedTuple

from splice.errors import ProtocolError, RouteError
from splice.routing.names import parse_port
from splice.routing.policy import ShedPolicy

#: the path prefix that selects a port when the host name cannot (e.g. a fixed DNS name)
PORT_PREFIX: Final = b"/port/"

#: "/port/" 1*DIGIT, ending at "/", "?" or the end: a whole segment, else it is just a path
_PREFIX: Final = re.compile(rb"/port/([0-9]+)(?=[/?]|\Z)")
#: RFC 9112 absolute-form: scheme "://" authority path-abempty ["?" query]; scheme is ours
_ABSOLUTE: Final = re.compile(rb"(?i:https?)://([^/?#]*)([/?].*|)", re.DOTALL)


class Route(NamedTuple):
    shed: str
    port: int
    #: the rewritten request target, or None when it is forwarded unchanged
    target: bytes | None


def split_port_prefix(target: bytes) -> tuple[int | None, bytes]:
    """``(port, rest)`` for an origin-form target with a port prefix, else ``(None, target)``.

    Raises:
        RouteError: INVALID_PORT when the prefix holds digits that are not a port.
    """
    if not target.startswith(PORT_PREFIX):
        return None, target
    m = _PREFIX.match(target)
    if m is None:
        return None, target
    digits = m[1].decode("ascii")
    port = parse_port(digits)
    if port is None:
        shown = digits if len(digits) <= 20 else digits[:17] + "..."
        raise RouteError(
            f"'{shown}' in the path is not a valid port (1-65535, no leading zeros).",
            code="INVALID_PORT",
        )
    rest = target[m.end() :]
    return port, rest if rest[:1] == b"/" else b"/" + rest


def split_absolute_form(target: bytes) -> tuple[bytes, bytes] | None:
    """``(authority, origin-form)`` for an absolute-form target; None for origin or ``*`` form.

    Raises:
        ProtocolError: BAD_REQUEST for another scheme, userinfo or an empty host.
    """
    m = _absolute(target)
    if m is None:
        return None
    path = m[2]
    return m[1], path if path[:1] == b"/" else b"/" + path


def route_request(
    shed: str,
    label_port: int | None,
    target: bytes,
    policy: ShedPolicy,
    default_port: int,
) -> Route:
    """Route one request for ``shed`` (and the port its Host label named, if any).

    Raises:
        RouteError: INVALID_PORT for a bad path prefix, PORT_NOT_EXPOSED from the policy.
        ProtocolError: BAD_REQUEST for a malformed absolute-form target.
    """
    if label_port is not None:
        return Route(shed, policy.pick_port(shed, label_port, default_port), None)
    m = _absolute(target)
    start = 0 if m is None else m.start(2)
    path_port, rest = split_port_prefix(target[start:] if start else target)
    port = policy.pick_port(shed, path_port, default_port)
    return Route(shed, port, None if path_port is None else target[:start] + rest)


def _absolute(target: bytes) -> re.Match[bytes] | None:
    if target[:1] == b"/" or target == b"*":
        return None
    m = _ABSOLUTE.fullmatch(target)
    if m is None:
        raise ProtocolError("The request target is neither a path nor an http(s) URL.")
    if b"@" in m[1]:
        raise ProtocolError("The request target has userinfo ('@'), which is not allowed.")
    if not m[1]:
        raise ProtocolError("The request target has an empty host.")
    return m
