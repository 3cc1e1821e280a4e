"""Loopback peers for the record/replay tests: an origin, a gateway, a proxy client.

- ``Origin``: an HTTP(S) server in threads: ``/bytes/N``, ``/chunked/N``, ``/close/N``
  (N known bytes so framed), ``/slow/N``, ``/echo`` (and ``/slowecho``, the same
  0.5 s late); it counts requests. ``stop`` closes
  the listener and every open connection: after it the origin is truly gone.
- ``Gateway``: ``splice.exchange.serve_forward_socket`` behind a uvloop listener in a
  thread, handed sockets the way the engine does (first head already read). Its policy
  gate maps every host to 127.0.0.1, refuses ``denied.test`` and counts dials.
- ``put``: an entry written straight into a ``Store``, for the index and CLI tests.
- ``full_writer``: a ``BlobWriter`` on a disk that fills up (ENOSPC), no real disk needed.
- ``python store_peers.py gateway SETTINGS_JSON``: a gateway as a process (crash test).
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import http.client
import json
import os
import random
import socket
import ssl
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import uvloop

from splice.errors import RouteError
from splice.exchange import serve_forward_socket
from splice.store.blobs import BlobWriter
from splice.store.index import Entry
from splice.store.runtime import StoreRuntime
from splice.store.settings import parse_store_section
from splice.store.store import Store

WAIT = 15.0
#: bodies are this block repeated (cut to length): cheap to make, hash and compare
BLOCK = random.Random(11).randbytes(1 << 20)


def body_chunks(n: int) -> Iterator[bytes]:
    for start in range(0, n, len(BLOCK)):
        yield BLOCK[: min(len(BLOCK), n - start)]


def body_sha(n: int) -> str:
    h = hashlib.sha256()
    for chunk in body_chunks(n):
        h.update(chunk)
    return h.hexdigest()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        self.server.origin.hits[self.path] += 1
        kind, _, arg = self.path.partition("?")[0].lstrip("/").partition("/")
        if kind in ("echo", "slowecho"):
            if kind == "slowecho":
                time.sleep(0.5)
            doc: dict[str, object] = {
                "method": self.command,
                "path": self.path,
                "body": hashlib.sha256(body).hexdigest(),
                "headers": [list(h) for h in self.headers.items()],
            }
            self._send(json.dumps(doc).encode())
        elif kind in ("bytes", "slow"):
            if kind == "slow":
                time.sleep(0.5)
            self._head(int(arg), {"Content-Length": arg, "X-Origin": "live"})
            self._write(int(arg))
        elif kind == "chunked":
            self._head(int(arg), {"Transfer-Encoding": "chunked"})
            for chunk in body_chunks(int(arg)):
                for piece in (chunk[:1000], chunk[1000:]):
                    if piece and self.command != "HEAD":
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            self.wfile.write(b"0\r\n\r\n")
        elif kind == "status":
            self.send_response(int(arg))
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif kind == "close":
            self.close_connection = True
            self._head(int(arg), {"Connection": "close"})
            self._write(int(arg))
        else:
            self.send_error(404)

    do_POST = do_PUT = do_HEAD = do_GET

    def _head(self, n: int, fields: dict[str, str]) -> None:
        self.send_response(200)
        for name, value in fields.items():
            self.send_header(name, value)
        self.end_headers()

    def _write(self, n: int) -> None:
        if self.command != "HEAD":
            for chunk in body_chunks(n):
                self.wfile.write(chunk)

    def _send(self, body: bytes) -> None:
        self._head(
            len(body), {"Content-Length": str(len(body)), "Content-Type": "application/json"}
        )
        self.wfile.write(body)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    origin: Origin

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, addr = super().get_request()
        if self.origin.tls is not None:
            sock = self.origin.tls.wrap_socket(sock, server_side=True)
        self.origin.conns.add(sock)
        return sock, addr


class Origin:
    def __init__(
        self, tls: ssl.SSLContext | None = None, address: tuple[str, int] = ("127.0.0.1", 0)
    ) -> None:
        self.tls = tls
        self.hits: Counter[str] = Counter()
        self.conns: set[socket.socket] = set()
        self.server = _Server(address, _Handler)
        self.server.origin = self
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def stop(self) -> None:
        if self.thread.is_alive():
            self.server.shutdown()
            self.thread.join(WAIT)
            self.server.server_close()
        for sock in list(self.conns):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()


class Gateway:
    def __init__(self, section: dict[str, Any], trust_bundle: str | None = None) -> None:
        self.runtime = StoreRuntime.open(parse_store_section(section), trust_bundle=trust_bundle)
        self.dials: list[tuple[str, int]] = []
        self.users: dict[str, str] | None = None
        #: each request head must come whole in this long (408 HEAD_TIMEOUT)
        self.head_timeout = 10.0
        #: every other wait, a send's included (the listener's idle_timeout)
        self.idle_timeout = WAIT
        self.loop = uvloop.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.setblocking(False)
        self.port = self.listener.getsockname()[1]
        self.tasks: set[asyncio.Future[None]] = set()
        self._call(self._start())

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(WAIT)

    async def _start(self) -> None:
        self.tasks.add(asyncio.ensure_future(self._accept()))

    async def _accept(self) -> None:
        for _ in range(100_000):
            conn, addr = await self.loop.sock_accept(self.listener)
            task = asyncio.ensure_future(self._hand_over(conn, addr[0]))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def _hand_over(self, conn: socket.socket, client_ip: str) -> None:
        head = b""
        while b"\r\n\r\n" not in head and len(head) < 65536:
            data = await self.loop.sock_recv(conn, 65536)
            if not data:
                conn.close()
                return
            head += data
        end = head.index(b"\r\n\r\n") + 4
        await serve_forward_socket(
            conn,
            first_head=head[:end],
            leftover=head[end:],
            runtime=self.runtime,
            policy_gate=self.gate,
            name_gate=self.name_gate,
            client_ip=client_ip,
            users=self.users,
            idle_timeout=self.idle_timeout,
            head_timeout=self.head_timeout,
        )

    def name_gate(self, host: str, port: int, client_ip: str, user: str | None) -> None:
        if host == "denied.test":
            raise RouteError("denied", code="DESTINATION_DENIED")

    async def gate(self, host: str, port: int, client_ip: str, user: str | None) -> str:
        self.name_gate(host, port, client_ip, user)
        self.dials.append((host, port))
        return "127.0.0.1"

    async def _stop(self) -> None:
        self.listener.close()
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)

    def close(self) -> None:
        if self.loop.is_closed():
            return
        self._call(self._stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(WAIT)
        # transports closed during _stop (a TLS shutdown, say) finish closing on the
        # loop's next turns; closing the loop before that fails with EBUSY
        self.loop.run_until_complete(asyncio.sleep(0.2))
        self.loop.close()
        self.runtime.close()


def put(store: Store, key: str, body: bytes, url: str = "http://a/") -> Entry:
    """Record ``body`` under ``key`` (padded to 64 characters) straight into ``store``."""
    w = store.writer()
    w.write(body)
    sha = w.finish()
    now = time.time()
    e = Entry(
        key.ljust(64, "0"), "GET", url, 200, "OK", (("X", "1"),), {}, sha, len(body), now, now
    )
    store.commit(w, e)
    return e


class FullFile:
    """A blob's temp file on a disk that fills up: writes past ``room`` bytes fail with
    ENOSPC, as does any flush after that or (``at_flush``) every flush, as with a
    buffered file on a full disk; ``close`` still closes the real file after it."""

    def __init__(self, real: Any, room: int, *, at_flush: bool = False) -> None:
        self.real = real
        self.room = room
        self.full = at_flush

    def write(self, data: bytes | memoryview) -> int:
        if len(data) > self.room:
            self.full = True
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= len(data)
        self.full = self.full or self.room == 0
        return int(self.real.write(data))

    def flush(self) -> None:
        if self.full:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.real.flush()

    def fileno(self) -> int:
        return int(self.real.fileno())

    def close(self) -> None:
        try:
            self.flush()
        finally:
            self.real.close()


def full_writer(w: BlobWriter, room: int, *, at_flush: bool = False) -> BlobWriter:
    """``w`` writing to a disk with ``room`` bytes left (or, ``at_flush``, failing when
    its buffer is flushed: at ``finish``)."""
    w._file = FullFile(w._file, room, at_flush=at_flush)  # type: ignore[assignment]
    return w


def proxy_get(
    port: int,
    url: str,
    method: str = "GET",
    body: bytes | None = None,
    headers: Mapping[str, str] | None = None,
    **fields: str,
) -> tuple[int, dict[str, str], bytes]:
    """One request through the gateway at ``port``: (status, fields, body). The request's
    header fields are ``headers`` (names that are not identifiers) and the keywords."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=WAIT)
    try:
        conn.request(method, url, body=body, headers={**(headers or {}), **fields})
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        conn.close()


def main(argv: list[str]) -> int:
    """``gateway SETTINGS_JSON``: serve until killed; prints the port when listening."""
    gw = Gateway(json.loads(argv[1]))
    print(gw.port, flush=True)
    time.sleep(600)
    gw.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
