"""Parse and build HAProxy PROXY protocol headers (v1 text, v2 binary), sans-IO.

``parse_proxy_header(buf)`` returns ``None`` while the header is incomplete, a
``ProxyInfo`` once it is whole (``length`` says how many bytes it took), and raises
``ProtocolError`` when ``buf`` cannot start a PROXY header or breaks the spec.
``maybe_proxy_header`` tells from the first bytes whether a header is there at all.
The encoders raise ``ValueError`` for addresses or ports they cannot represent.
Spec: https://www.haproxy.org/download/2.9/doc/proxy-protocol.txt
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import IntEnum
from ipaddress import IPv4Address, IPv6Address, ip_address
from typing import Final, NamedTuple

from splice.errors import ProtocolError
from splice.wire.cursor import Cursor, Short

# Spec §2.2: the v2 header opens with these 12 bytes, which no other protocol sends.
V2_SIGNATURE: Final = b"\r\n\r\n\x00\r\nQUIT\n"
# Spec §2.1: every v1 header starts so.
_V1_PREFIX: Final = b"PROXY "
# Spec §2.1: "PROXY UNKNOWN" with two full IPv6 addresses and ports is 107 bytes.
V1_MAX: Final = 107
# Spec §2.2: signature, version/command, family/transport, 16-bit payload length.
_V2_HEADER: Final = 16
# IPv6 addresses and ports take 36 bytes, a UNIX block 216; 2 KiB leaves room for
# every TLV a real proxy sends while bounding what we buffer before routing.
MAX_V2_PAYLOAD: Final = 2048
# Spec §2.2: the high nibble of the 13th byte.
_V2_VERSION: Final = 2
# Spec §2.2: two UNIX socket paths of 108 bytes each.
_UNIX_BLOCK: Final = 216

_Address = IPv4Address | IPv6Address


class Command(IntEnum):
    LOCAL = 0  #: spec §2.2: a health check by the proxy itself; use the real endpoints
    PROXY = 1  #: spec §2.2: relayed on behalf of another node


class Family(IntEnum):
    UNSPEC = 0  #: spec §2.2: AF_UNSPEC, no address block
    INET = 1  #: spec §2.2: AF_INET, 4-byte addresses
    INET6 = 2  #: spec §2.2: AF_INET6, 16-byte addresses
    UNIX = 3  #: spec §2.2: AF_UNIX, 108-byte paths


class Transport(IntEnum):
    UNSPEC = 0  #: spec §2.2
    STREAM = 1  #: spec §2.2: SOCK_STREAM (TCP)


class PP2Type(IntEnum):
    ALPN = 0x01  #: spec §2.2.1: the protocol the client negotiated
    AUTHORITY = 0x02  #: spec §2.2.2: the host name the client asked for (TLS SNI)


class ProxyInfo(NamedTuple):
    #: original client (address, port); None for v1 UNKNOWN, v2 LOCAL, UNSPEC, UNIX
    src: tuple[str, int] | None
    #: address the client connected to; None exactly when ``src`` is
    dst: tuple[str, int] | None
    #: 1 or 2
    version: int
    #: v2 (type, value) pairs in wire order; empty for v1
    tlvs: tuple[tuple[int, bytes], ...]
    #: bytes of ``buf`` the header occupies
    length: int


def maybe_proxy_header(buf: bytes | bytearray | memoryview) -> bool | None:
    """True: starts like a PROXY header; False: cannot be one; None: too short to tell."""
    head = bytes(buf[: len(V2_SIGNATURE)])
    if head.startswith((_V1_PREFIX, V2_SIGNATURE)):
        return True
    if _V1_PREFIX.startswith(head) or V2_SIGNATURE.startswith(head):
        return None
    return False


def parse_proxy_header(buf: bytes | bytearray | memoryview) -> ProxyInfo | None:
    """None = need more; ProtocolError if buf cannot start a PROXY header or is malformed."""
    kind = maybe_proxy_header(buf)
    if kind is None:
        return None
    if not kind:
        raise ProtocolError("not a PROXY protocol header")
    if buf[0] == _V1_PREFIX[0]:
        return _parse_v1(buf)
    return _parse_v2(buf)


def _parse_v1(buf: bytes | bytearray | memoryview) -> ProxyInfo | None:
    head = bytes(buf[:V1_MAX])
    end = head.find(b"\n")
    if end < 0:
        if len(head) < V1_MAX:
            return None
        raise ProtocolError("PROXY v1 line is too long", code="HEAD_TOO_LARGE")
    if head[end - 1] != ord("\r"):
        raise ProtocolError("PROXY v1 line does not end in CRLF")
    try:
        fields = head[: end - 1].decode("ascii").split(" ")
    except UnicodeDecodeError:
        raise ProtocolError("PROXY v1 line is not ASCII") from None
    if fields[1] == "UNKNOWN":
        return ProxyInfo(None, None, 1, (), end + 1)
    if fields[1] not in ("TCP4", "TCP6") or len(fields) != 6:
        raise ProtocolError("PROXY v1 line is malformed")
    version = 4 if fields[1] == "TCP4" else 6
    src = (_v1_address(fields[2], version), _v1_port(fields[4]))
    dst = (_v1_address(fields[3], version), _v1_port(fields[5]))
    return ProxyInfo(src, dst, 1, (), end + 1)


def _v1_address(text: str, version: int) -> str:
    try:
        address = ip_address(text)
    except ValueError:
        raise ProtocolError(f"PROXY v1 address {text!r} is not valid") from None
    if address.version != version or "%" in text:
        raise ProtocolError(f"PROXY v1 address {text!r} is not valid for TCP{version}")
    return str(address)


def _v1_port(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or text != str(int(text)) or int(text) > 0xFFFF:
        raise ProtocolError(f"PROXY v1 port {text!r} is not valid")
    return int(text)


def _parse_v2(buf: bytes | bytearray | memoryview) -> ProxyInfo | None:
    if len(buf) < _V2_HEADER:
        return None
    version, command = buf[12] >> 4, buf[12] & 0xF
    family, transport = buf[13] >> 4, buf[13] & 0xF
    size = int.from_bytes(buf[14:_V2_HEADER], "big")
    if version != _V2_VERSION or command > Command.PROXY:
        raise ProtocolError(f"PROXY v2 version/command byte {buf[12]:#04x} is not valid")
    if family > Family.UNIX or transport > Transport.STREAM:
        raise ProtocolError(f"PROXY v2 family/transport byte {buf[13]:#04x} is not supported")
    if size > MAX_V2_PAYLOAD:
        raise ProtocolError("PROXY v2 header is too large", code="HEAD_TOO_LARGE")
    if len(buf) < _V2_HEADER + size:
        return None
    payload = Cursor(bytes(buf[_V2_HEADER : _V2_HEADER + size]))
    try:
        src, dst = _v2_addresses(payload, Family(family))
        tlvs = _v2_tlvs(payload)
    except Short:
        raise ProtocolError("PROXY v2 address block or TLV overruns the header") from None
    if command == Command.LOCAL:
        src = dst = None
    return ProxyInfo(src, dst, 2, tlvs, _V2_HEADER + size)


def _v2_addresses(
    payload: Cursor, family: Family
) -> tuple[tuple[str, int] | None, tuple[str, int] | None]:
    if family == Family.UNIX:
        payload.take(_UNIX_BLOCK)
    if family in (Family.UNIX, Family.UNSPEC):
        return None, None
    size = 4 if family == Family.INET else 16
    src, dst = payload.take(size), payload.take(size)
    src_port, dst_port = payload.u16(), payload.u16()
    return (str(ip_address(bytes(src))), src_port), (str(ip_address(bytes(dst))), dst_port)


def _v2_tlvs(payload: Cursor) -> tuple[tuple[int, bytes], ...]:
    tlvs: list[tuple[int, bytes]] = []
    while payload.remaining:
        kind = payload.u8()
        tlvs.append((kind, bytes(payload.take(payload.u16()))))
    return tuple(tlvs)


def encode_v1(src: tuple[str, int], dst: tuple[str, int]) -> bytes:
    """A v1 line for a TCP connection; mixed families are sent as IPv4-mapped IPv6."""
    src_ip, dst_ip = _same_family(src[0], dst[0])
    proto = "TCP4" if src_ip.version == 4 else "TCP6"
    line = f"PROXY {proto} {src_ip} {dst_ip} {_port(src[1])} {_port(dst[1])}\r\n"
    return line.encode("ascii")


def encode_v2(
    src: tuple[str, int], dst: tuple[str, int], tlvs: Sequence[tuple[int, bytes]] = ()
) -> bytes:
    """A v2 PROXY/STREAM header; mixed families are sent as IPv4-mapped IPv6."""
    src_ip, dst_ip = _same_family(src[0], dst[0])
    family = Family.INET if src_ip.version == 4 else Family.INET6
    payload = b"".join(
        [
            src_ip.packed,
            dst_ip.packed,
            _port(src[1]).to_bytes(2, "big"),
            _port(dst[1]).to_bytes(2, "big"),
            *[_tlv(kind, value) for kind, value in tlvs],
        ]
    )
    if len(payload) > 0xFFFF:
        raise ValueError("PROXY v2 payload exceeds 65535 bytes")
    return b"".join(
        [
            V2_SIGNATURE,
            bytes([_V2_VERSION << 4 | Command.PROXY, family << 4 | Transport.STREAM]),
            len(payload).to_bytes(2, "big"),
            payload,
        ]
    )


def _same_family(src: str, dst: str) -> tuple[_Address, _Address]:
    src_ip, dst_ip = ip_address(src.partition("%")[0]), ip_address(dst.partition("%")[0])
    if src_ip.version == dst_ip.version:
        return src_ip, dst_ip
    return _as_v6(src_ip), _as_v6(dst_ip)


def _as_v6(address: _Address) -> IPv6Address:
    if isinstance(address, IPv6Address):
        return address
    return IPv6Address(f"::ffff:{address}")


def _port(port: int) -> int:
    if not 0 <= port <= 0xFFFF:
        raise ValueError(f"port {port} is out of range")
    return port


def _tlv(kind: int, value: bytes) -> bytes:
    if not 0 <= kind <= 0xFF or len(value) > 0xFFFF:
        raise ValueError(f"TLV type {kind} or its {len(value)}-byte value is out of range")
    return bytes([kind]) + len(value).to_bytes(2, "big") + value
