"""ClientHello records made for the tests: Python's own TLS client's first flight, and
hand-made hellos with exactly the fields a test wants (wire/test_client_hello.py,
wire/test_hello_scan.py)."""

from __future__ import annotations

import ssl
import struct
from functools import cache
from itertools import pairwise

import pytest

TLS12, TLS13 = ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3


@cache
def real_hello(
    server_name: str | None = None, alpn: tuple[str, ...] = (), version: ssl.TLSVersion = TLS13
) -> bytes:
    """The first flight of Python's own TLS client, over memory BIOs."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ctx.maximum_version = version
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    outgoing = ssl.MemoryBIO()
    tls = ctx.wrap_bio(ssl.MemoryBIO(), outgoing, server_hostname=server_name)
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


REAL = [
    real_hello("web.alice.shed.example", ("h2", "http/1.1")),
    real_hello("web.alice.shed.example", ("http/1.1",), TLS12),
    real_hello(None, ("h2",)),
    real_hello(None, (), TLS12),
]


def handshake_message(hello: bytes) -> bytes:
    """The ClientHello handshake message carried by the records of ``hello``."""
    message, pos = b"", 0
    while pos < len(hello):
        (size,) = struct.unpack_from("!H", hello, pos + 3)
        message += hello[pos + 5 : pos + 5 + size]
        pos += 5 + size
    return message


def records(message: bytes, cuts: list[int] | None = None, version: int = 0x0301) -> bytes:
    """``message`` in handshake records, split at the offsets in ``cuts``."""
    bounds = [0, *sorted(set(cuts or [])), len(message)]
    return b"".join(
        struct.pack("!BHH", 22, version, end - start) + message[start:end]
        for start, end in pairwise(bounds)
        if end > start
    )


def extension(kind: int, data: bytes) -> bytes:
    return struct.pack("!HH", kind, len(data)) + data


def vector16(data: bytes) -> bytes:
    return struct.pack("!H", len(data)) + data


def sni(*names: bytes, name_type: int = 0) -> bytes:
    entries = b"".join(bytes([name_type]) + vector16(name) for name in names)
    return extension(0, vector16(entries))


def alpn(*names: bytes) -> bytes:
    return extension(16, vector16(b"".join(bytes([len(n)]) + n for n in names)))


def built_hello(
    extensions: bytes | None = b"",
    *,
    session_id: bytes = b"",
    suites: bytes = b"\x13\x01",
    compression: bytes = b"\x00",
    trailer: bytes = b"",
) -> bytes:
    """A hand-made ClientHello record; ``extensions=None`` omits the extension block."""
    body = b"\x03\x03" + bytes(32) + bytes([len(session_id)]) + session_id
    body += vector16(suites) + bytes([len(compression)]) + compression
    if extensions is not None:
        body += vector16(extensions)
    body += trailer
    return records(b"\x01" + len(body).to_bytes(3, "big") + body)
