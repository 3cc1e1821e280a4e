"""Micro-benchmarks of the pure per-connection parsers (pytest-benchmark).

These run once per connection (or request) on splice's hot path, so their cost is a
floor under newconn's CPU µs/request.

    python -m pytest bench/test_micro.py --benchmark-only -p no:cacheprovider
"""

from __future__ import annotations

import importlib
import ssl
import struct
from collections.abc import Callable
from types import ModuleType
from typing import Any

import pytest

HOST = b"alpha.bench.test"
DOMAINS = ("bench.test",)

BROWSER_HEAD = (
    b"GET /static/app.js?v=3 HTTP/1.1\r\n"
    b"Host: alpha.bench.test\r\n"
    b"User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0\r\n"
    b"Accept: */*\r\n"
    b"Accept-Language: en-US,en;q=0.5\r\n"
    b"Accept-Encoding: gzip, deflate, br, zstd\r\n"
    b"Referer: http://alpha.bench.test/\r\n"
    b"Connection: keep-alive\r\n"
    b"Cookie: session=0123456789abcdef0123456789abcdef; theme=dark\r\n"
    b"Sec-Fetch-Dest: script\r\n"
    b"Sec-Fetch-Mode: no-cors\r\n"
    b"Sec-Fetch-Site: same-origin\r\n"
    b"\r\n"
)
CURL_HEAD = b"GET /small HTTP/1.1\r\nHost: alpha.bench.test\r\nUser-Agent: curl/7.88\r\n\r\n"
WS_HEAD = (
    b"GET /ws HTTP/1.1\r\nHost: 3000-alpha.bench.test\r\nUpgrade: websocket\r\n"
    b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
)
NGINX_RESPONSE = (
    b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Sat, 05 Dec 2026 23:14:54 GMT\r\n"
    b"Content-Type: text/plain\r\nContent-Length: 1024\r\n"
    b"Last-Modified: Sat, 05 Dec 2026 20:47:00 GMT\r\nConnection: keep-alive\r\n"
    b'ETag: "6b147844-400"\r\nAccept-Ranges: bytes\r\n\r\n'
)
PROXY_V1 = b"PROXY TCP4 192.0.2.10 198.51.100.20 56324 443\r\nGET / HTTP/1.1\r\n"
PROXY_V2 = (
    b"\r\n\r\n\x00\r\nQUIT\n"  # signature
    + bytes((0x21, 0x11))  # v2 PROXY, TCP over IPv4
    + struct.pack("!H", 12)
    + bytes((192, 0, 2, 10, 198, 51, 100, 20))
    + struct.pack("!HH", 56324, 443)
)


def _module(name: str) -> ModuleType:
    return importlib.import_module(name)


def client_hello(server_name: str = HOST.decode()) -> bytes:
    """A real ClientHello from this Python's OpenSSL (TLS 1.3 + 1.2, SNI, ALPN)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(inc, out, server_hostname=server_name)
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    return out.read()


Bench = Callable[..., Any]


@pytest.mark.parametrize(
    "buf", [CURL_HEAD, BROWSER_HEAD, WS_HEAD], ids=["curl", "browser", "websocket"]
)
def test_parse_head(benchmark: Bench, buf: bytes) -> None:
    parse_head = _module("splice.wire.http_head").parse_head
    head = benchmark(parse_head, buf)
    assert head is not None and head.host is not None


def test_parse_response_head(benchmark: Bench) -> None:
    """nginx's answer to /small: read on every pooled request to know its end."""
    parse = _module("splice.wire.http_response").parse_response_head
    r = benchmark(parse, NGINX_RESPONSE, head_request=False)
    assert r is not None and r.length == 1024 and r.keep_alive


def test_parse_head_incomplete(benchmark: Bench) -> None:
    """The common partial read: most of a head, no blank line yet."""
    parse_head = _module("splice.wire.http_head").parse_head
    assert benchmark(parse_head, BROWSER_HEAD[:-40]) is None


@pytest.mark.parametrize(
    "host",
    [HOST, b"3000-alpha.bench.test", b"ALPHA.bench.test.:8080"],
    ids=["name", "port-name", "mixed-case-port"],
)
def test_parse_host(benchmark: Bench, host: bytes) -> None:
    parse_host = _module("splice.routing.names").parse_host
    assert benchmark(parse_host, host, DOMAINS) is not None


def test_parse_client_hello(benchmark: Bench) -> None:
    parse = _module("splice.wire.client_hello").parse_client_hello
    buf = client_hello()
    hello = benchmark(parse, buf)
    assert hello is not None and hello.server_name == HOST.decode()


@pytest.mark.parametrize("buf", [PROXY_V1, PROXY_V2], ids=["v1", "v2"])
def test_parse_proxy_header(benchmark: Bench, buf: bytes) -> None:
    parse = _module("splice.wire.proxy_header").parse_proxy_header
    info = benchmark(parse, buf)
    assert info is not None
