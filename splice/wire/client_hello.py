"""Find the SNI host name and ALPN offer in a TLS ClientHello, sans-IO.

``parse_client_hello(buf)`` is called again each time ``buf`` grows. It returns
``None`` while the hello is incomplete, a ``Hello`` once every record carrying it
has arrived, and raises ``ProtocolError`` as soon as the bytes present cannot be
the start of a ClientHello. A "need more" call reads only record headers; the
extensions are walked once, when the whole handshake message is present. The
message may be fragmented over several handshake records; bytes after the last
of them (ChangeCipherSpec, early data) are left alone.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import IntEnum
from typing import Final, NamedTuple

from splice.errors import ProtocolError

# Real hellos are 200-2000 bytes; post-quantum key shares (ML-KEM hybrids, ~1.2 KB
# each) push a few to 3-4 KB. 16 KiB is ample headroom yet bounds what one
# connection may make us buffer before it has been routed anywhere.
MAX_HELLO: Final = 16 * 1024

# RFC 8446 §5.1: type, legacy_record_version, length.
_RECORD_HEADER: Final = 5
# RFC 8446 §4: msg_type, then a 24-bit length.
_HANDSHAKE_HEADER: Final = 4
# RFC 8446 §5.1: a plaintext fragment MUST NOT exceed 2^14 bytes.
_MAX_FRAGMENT: Final = 1 << 14
# RFC 8446 §4.1.2: legacy_version (2) and random (32) open the ClientHello body.
_FIXED_FIELDS: Final = 2 + 32
# RFC 8446 §4.1.2: legacy_session_id is opaque<0..32>.
_MAX_SESSION_ID: Final = 32
# RFC 1035 §2.3.4: a name is at most 253 characters in text form, a label 63.
_MAX_NAME: Final = 253
_MAX_LABEL: Final = 63
# Letters, digits, hyphen and the dot between labels; underscore too, as real service
# names (_acme-challenge, docker-compose hosts) use it.
_NAME_CHARS: Final = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-_.")
_OVERRUN: Final = "ClientHello fields overrun the message"
#: a record header and a handshake header: what the one-record fast path reads
_SINGLE: Final = _RECORD_HEADER + _HANDSHAKE_HEADER - 1


class ContentType(IntEnum):
    alert = 21  #: RFC 8446 §5.1
    handshake = 22  #: RFC 8446 §5.1


class HandshakeType(IntEnum):
    client_hello = 1  #: RFC 8446 §4


class ExtensionType(IntEnum):
    server_name = 0  #: RFC 6066 §3
    application_layer_protocol_negotiation = 16  #: RFC 7301 §3.1


class NameType(IntEnum):
    host_name = 0  #: RFC 6066 §3


# plain ints for the per-extension loop: an enum member lookup costs more than a compare
_SERVER_NAME: Final = int(ExtensionType.server_name)
_ALPN: Final = int(ExtensionType.application_layer_protocol_negotiation)
_HOST_NAME: Final = int(NameType.host_name)


class Hello(NamedTuple):
    #: SNI host_name: ASCII, lower-cased, no trailing dot; None if absent
    server_name: str | None
    #: ALPN protocols offered, for the log (bytes outside printable ASCII as \xNN)
    alpn: tuple[str, ...]
    #: bytes of ``buf`` that the hello's records occupy
    length: int


#: ``scan_hello(buf, max_size) -> (server_name, alpn, length) | None``
Scanner = Callable[
    [bytes | bytearray | memoryview, int], tuple[str | None, tuple[str, ...], int] | None
]


def _c_scanner() -> Scanner | None:
    try:
        from splice.wire._head_scan import scan_hello
    except ImportError:  # an interpreted install: the Python walk does it all
        return None
    return scan_hello


#: the C scanner of a well-formed one-record hello, or None. It takes what the walk
#: below would return and declines (None) everything else, which the walk then
#: handles. Not Final: the tests run ``parse_client_hello`` with and without it
SCAN: Scanner | None = _c_scanner()


def parse_client_hello(
    buf: bytes | bytearray | memoryview, max_size: int = MAX_HELLO
) -> Hello | None:
    """None = need more bytes. Raises ProtocolError on garbage, SSLv2 hellos, non-handshake
    records, a first handshake message that is not ClientHello, malformed extensions,
    or a hello bigger than max_size (code HEAD_TOO_LARGE)."""
    if SCAN is not None:
        got = SCAN(buf, max_size)
        if got is not None:
            # not Hello(*got): a NamedTuple's __new__ is generated Python, ~2,000
            # instructions; tuple.__new__ makes the same object in C
            return tuple.__new__(Hello, got)
    if len(buf) > _SINGLE and buf[0] == ContentType.handshake and buf[1] == 3:
        # the usual case, one record holding exactly the whole message: the checks
        # below are those _find_message makes, for its first and last record
        size = buf[3] << 8 | buf[4]
        end = _RECORD_HEADER + size
        if (
            0 < size <= _MAX_FRAGMENT
            and end <= max_size
            and end <= len(buf)
            and buf[5] == HandshakeType.client_hello
            and size == _HANDSHAKE_HEADER + (buf[6] << 16 | buf[7] << 8 | buf[8])
        ):
            return Hello(*_walk_hello(bytes(buf[_RECORD_HEADER:end])), end)
    found = _find_message(buf, max_size)
    if found is None:
        return None
    spans, length = found
    server_name, alpn = _walk_hello(b"".join([buf[start:end] for start, end in spans]))
    return Hello(server_name, alpn, length)


def _find_message(
    buf: bytes | bytearray | memoryview, max_size: int
) -> tuple[list[tuple[int, int]], int] | None:
    """The fragments of the first handshake message and the end of its last record."""
    spans: list[tuple[int, int]] = []
    head = b""
    need = 0
    have = 0
    pos = 0
    while True:
        size = _record_size(buf, pos)
        if size is None:
            return None
        start, end = pos + _RECORD_HEADER, pos + _RECORD_HEADER + size
        if end > max_size:
            raise ProtocolError("the ClientHello is too large", code="HEAD_TOO_LARGE")
        if len(head) < _HANDSHAKE_HEADER:
            head += bytes(buf[start : min(end, start + _HANDSHAKE_HEADER - len(head))])
            if head and head[0] != HandshakeType.client_hello:
                raise ProtocolError("the first handshake message is not a ClientHello")
            if len(head) == _HANDSHAKE_HEADER:
                need = _HANDSHAKE_HEADER + int.from_bytes(head[1:], "big")
        if need:
            _check_bound(have + size, need, end, max_size)
        if len(buf) < end:
            return None
        spans.append((start, end))
        have += size
        pos = end
        if have == need:
            return spans, end


def _record_size(buf: bytes | bytearray | memoryview, pos: int) -> int | None:
    """The fragment length of the record at ``pos``; None if its header is partial."""
    header = bytes(buf[pos : pos + _RECORD_HEADER])
    if header and header[0] != ContentType.handshake:
        raise ProtocolError(_not_handshake(header[0], pos))
    if len(header) > 1 and header[1] != 3:
        raise ProtocolError("not a TLS record")
    if len(header) < _RECORD_HEADER:
        return None
    size = int.from_bytes(header[3:], "big")
    if not 0 < size <= _MAX_FRAGMENT:
        raise ProtocolError(f"TLS record length {size} is out of range")
    return size


def _not_handshake(first: int, pos: int) -> str:
    if pos == 0 and first & 0x80:
        return "SSLv2 ClientHellos are not supported"
    if first == ContentType.alert:
        return "the client sent an alert instead of a ClientHello"
    if pos == 0:
        return "not a TLS handshake"
    return "the ClientHello is interrupted by a non-handshake record"


def _check_bound(have: int, need: int, end: int, max_size: int) -> None:
    """Once the message length is known: no trailing data, and a final size in bounds."""
    if have > need:
        raise ProtocolError("data follows the ClientHello in its record")
    least = end if have == need else end + _RECORD_HEADER + need - have
    if least > max_size:
        raise ProtocolError("the ClientHello is too large", code="HEAD_TOO_LARGE")


def _walk_hello(m: bytes) -> tuple[str | None, tuple[str, ...]]:
    """RFC 8446 §4.1.2, from the handshake header to the end of the extensions.

    Plain indexing over ``m`` rather than a cursor object: this runs once per TLS
    connection, and method calls per field cost more than the rest of the parse.
    Every length is checked against the end of its enclosing vector before use.
    """
    end = len(m)
    pos = _HANDSHAKE_HEADER + _FIXED_FIELDS
    if pos >= end:
        raise ProtocolError(_OVERRUN)
    n = m[pos]
    pos += 1 + n
    if pos > end:
        raise ProtocolError(_OVERRUN)
    if n > _MAX_SESSION_ID:
        raise ProtocolError("ClientHello session id is too long")
    if pos + 2 > end:
        raise ProtocolError(_OVERRUN)
    n = m[pos] << 8 | m[pos + 1]
    pos += 2 + n
    if pos > end:
        raise ProtocolError(_OVERRUN)
    if n < 2 or n % 2:
        raise ProtocolError("ClientHello cipher suite list is malformed")
    if pos >= end:
        raise ProtocolError(_OVERRUN)
    n = m[pos]
    pos += 1 + n
    if pos > end:
        raise ProtocolError(_OVERRUN)
    if not n:
        raise ProtocolError("ClientHello offers no compression method")
    return _walk_extensions(m, pos)


def _walk_extensions(m: bytes, pos: int) -> tuple[str | None, tuple[str, ...]]:
    server_name: str | None = None
    alpn: tuple[str, ...] = ()
    end = len(m)
    if pos == end:
        return server_name, alpn
    if pos + 2 > end:
        raise ProtocolError(_OVERRUN)
    block_end = pos + 2 + (m[pos] << 8 | m[pos + 1])
    if block_end > end:
        raise ProtocolError(_OVERRUN)
    if block_end < end:
        raise ProtocolError("data follows the ClientHello extensions")
    pos += 2
    seen: set[int] = set()
    while pos < block_end:
        if pos + 4 > block_end:
            raise ProtocolError(_OVERRUN)
        kind = m[pos] << 8 | m[pos + 1]
        start = pos + 4
        pos = start + (m[pos + 2] << 8 | m[pos + 3])
        if pos > block_end:
            raise ProtocolError(_OVERRUN)
        if kind in seen:
            raise ProtocolError(f"ClientHello repeats extension {kind}")
        seen.add(kind)
        if kind == _SERVER_NAME:
            server_name = _server_name(m, start, pos)
        elif kind == _ALPN:
            alpn = _alpn(m, start, pos)
    return server_name, alpn


def _vector(m: bytes, pos: int, end: int, what: str) -> int:
    """A non-empty opaque<1..2^16-1> vector that fills ``m[pos:end]`` exactly; where
    its contents start."""
    if pos + 2 > end:
        raise ProtocolError(_OVERRUN)
    inner_end = pos + 2 + (m[pos] << 8 | m[pos + 1])
    if inner_end > end:
        raise ProtocolError(_OVERRUN)
    if inner_end < end or inner_end == pos + 2:
        raise ProtocolError(f"ClientHello {what} extension is malformed")
    return pos + 2


def _server_name(m: bytes, pos: int, end: int) -> str | None:
    """RFC 6066 §3: the host_name entry of the ServerNameList."""
    pos = _vector(m, pos, end, "server_name")
    found: str | None = None
    while pos < end:
        if pos + 3 > end:
            raise ProtocolError(_OVERRUN)
        kind = m[pos]
        start = pos + 3
        pos = start + (m[pos + 1] << 8 | m[pos + 2])
        if pos > end:
            raise ProtocolError(_OVERRUN)
        if kind != _HOST_NAME:
            continue
        if found is not None:
            raise ProtocolError("ClientHello names two hosts")
        found = _host_name(m[start:pos])
    return found


def _host_name(raw: bytes) -> str:
    name = raw.decode("ascii", "replace").lower().removesuffix(".")
    labels = name.split(".")
    if (
        len(name) > _MAX_NAME
        or not set(name) <= _NAME_CHARS
        or not all(0 < len(label) <= _MAX_LABEL for label in labels)
    ):
        raise ProtocolError(f"ClientHello server name {raw[:_MAX_NAME]!r} is not a host name")
    return name


def _alpn(m: bytes, pos: int, end: int) -> tuple[str, ...]:
    """RFC 7301 §3.1: ProtocolName protocol_name_list<2..2^16-1>, each opaque<1..2^8-1>."""
    pos = _vector(m, pos, end, "ALPN")
    offered: list[str] = []
    while pos < end:
        start = pos + 1
        pos = start + m[pos]
        if pos > end:
            raise ProtocolError(_OVERRUN)
        if pos == start:
            raise ProtocolError("ClientHello offers an empty ALPN protocol name")
        offered.append("".join(chr(b) if 0x20 < b < 0x7F else f"\\x{b:02x}" for b in m[start:pos]))
    return tuple(offered)
