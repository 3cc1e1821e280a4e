"""Resolver that asks shed-server's HTTP API: ``GET /api/sheds/{name}``.

A small async HTTP/1.1 client (h11 over asyncio streams): idle keep-alive connections are
reused (last used first; sequential lookups share one), a fresh one is opened when all are
busy or closed, and a reused one that dies before answering is retried once (GETs are safe).
Every request has one deadline (``timeout``) covering connect, send and receive.
Answers: running -> Endpoint (address None when there is no ``ip_address``: only the
Connect API reaches it); 404 -> None; stopped/starting/error -> SHED_NOT_RUNNING;
refused, timed out, 5xx, malformed -> BackendError RESOLVER_UNAVAILABLE.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from typing import NamedTuple
from urllib.parse import urlsplit

import h11

from splice import __version__
from splice.errors import BackendError
from splice.resolve._shed import is_shed_name, not_running, running_address, unavailable
from splice.resolve.base import Endpoint

log = logging.getLogger("splice.resolve")

#: a shed object is ~300 bytes; a megabyte is far past any real answer
MAX_BODY = 1 << 20
#: response heads from shed-server are a few hundred bytes
MAX_HEAD = 16 * 1024
#: one busy lookup per connection; more than this many at once wait (bounds API load)
MAX_CONNECTIONS = 8
#: read size: one read holds any normal answer
READ_SIZE = 64 * 1024


class _Conn(NamedTuple):
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    http: h11.Connection


class _Stale(ConnectionError):
    """A reused keep-alive connection closed before any answer: retry on a fresh one."""


class ShedApiResolver:
    kind = "shed-api"
    synchronous = False

    def __init__(self, base_url: str, *, timeout: float = 2.0) -> None:
        url = urlsplit(base_url)
        if url.scheme != "http" or not url.hostname:
            raise ValueError(f"shed-server URL must be http://HOST[:PORT], not {base_url!r}")
        self._host = url.hostname
        self._port = url.port or 80
        self._prefix = url.path.rstrip("/")
        self._host_header = url.netloc.rpartition("@")[2]
        self._timeout = timeout
        self._idle: list[_Conn] = []
        self._slots = asyncio.Semaphore(MAX_CONNECTIONS)
        #: TCP connections opened so far (keep-alive shows as few)
        self.connections_opened = 0

    def lookup_now(self, shed: str) -> Endpoint | None:
        return None

    async def resolve(self, shed: str) -> Endpoint | None:
        if not is_shed_name(shed):
            return None  # shed-server could never have made it; do not put it in a URL
        status, doc = await self._get_json(f"/api/sheds/{shed}", shed)
        if status == 404 or (status == 400 and _error_code(doc) == "INVALID_SHED_NAME"):
            return None
        if status != 200 or not isinstance(doc, dict) or not isinstance(doc.get("status"), str):
            raise unavailable(shed, f"shed-server gave an unusable answer for {shed!r}.")
        if doc["status"] != "running":
            raise not_running(shed, doc["status"])
        try:
            address = running_address(doc, f"shed-server answer for {shed!r}")
        except ValueError as e:
            raise unavailable(shed, str(e)) from None
        return Endpoint(shed=shed, address=address, status="running", source=self.kind)

    async def info(self) -> dict[str, object]:
        """``GET /api/info`` (server name, version, backend) for health checks.

        Raises:
            BackendError: RESOLVER_UNAVAILABLE when shed-server does not answer it.
        """
        status, doc = await self._get_json("/api/info", None)
        if status != 200 or not isinstance(doc, dict):
            raise unavailable(None, f"shed-server /api/info answered HTTP {status}.")
        return doc

    async def close(self) -> None:
        idle, self._idle = self._idle, []
        for conn in idle:
            conn.writer.close()

    async def _get_json(self, path: str, shed: str | None) -> tuple[int, object]:
        """(status, parsed JSON body or None); 5xx, I/O errors and timeouts raise."""
        try:
            async with asyncio.timeout(self._timeout):
                async with self._slots:
                    status, body = await self._request(self._prefix + path)
        except TimeoutError:
            raise self._down(shed, f"did not answer within {self._timeout:g}s") from None
        except (OSError, h11.ProtocolError) as e:
            raise self._down(shed, f"could not be reached ({_why(e)})") from None
        if status >= 500:
            raise self._down(shed, f"answered HTTP {status}")
        try:
            return status, json.loads(body) if body else None
        except (ValueError, RecursionError):
            if status == 200:
                raise self._down(shed, "sent malformed JSON") from None
            return status, None  # e.g. Go's plain-text "404 page not found"

    def _down(self, shed: str | None, what: str) -> BackendError:
        """RESOLVER_UNAVAILABLE; a lookup's failure is logged with the shed-server's address.

        The message leaves it out: a client's error page shows the message, and a
        browser has no business learning where the host's control plane listens. The
        health checks (``info``, no shed) print the configured URL beside it themselves.
        """
        if shed is not None:
            log.warning("shed-server at %s %s (looking up shed %r)", self._host_header, what, shed)
        return unavailable(shed, f"shed-server {what}.")

    async def _request(self, target: str) -> tuple[int, bytes]:
        conn = self._take_idle()
        if conn is not None:
            try:
                return await self._exchange(conn, target)
            except ConnectionError:
                pass  # the server closed it while idle; one retry on a fresh connection
        conn = await self._open()
        try:
            return await self._exchange(conn, target)
        except _Stale:
            raise ConnectionResetError("connection closed before an answer") from None

    def _take_idle(self) -> _Conn | None:
        while self._idle:
            conn = self._idle.pop()
            if not (conn.writer.is_closing() or conn.reader.at_eof()):
                return conn
            conn.writer.close()  # the server closed it while idle
        return None

    async def _open(self) -> _Conn:
        reader, writer = await asyncio.open_connection(self._host, self._port, limit=READ_SIZE)
        self.connections_opened += 1
        return _Conn(reader, writer, h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEAD))

    async def _exchange(self, conn: _Conn, target: str) -> tuple[int, bytes]:
        """One GET on ``conn``; the connection goes back to idle only if clean afterwards."""
        headers = [
            ("Host", self._host_header),
            ("Accept", "application/json"),
            ("User-Agent", f"splice/{__version__}"),
        ]
        try:
            out = conn.http.send(h11.Request(method="GET", target=target, headers=headers))
            conn.writer.write(out + conn.http.send(h11.EndOfMessage()))
            await conn.writer.drain()
            status, body = await _read_response(conn)
        except BaseException:
            conn.writer.close()  # half-used (or timed out): never reused
            raise
        self._release(conn)
        return status, body

    def _release(self, conn: _Conn) -> None:
        http = conn.http
        if http.our_state is h11.DONE and http.their_state is h11.DONE:
            http.start_next_cycle()
            self._idle.append(conn)  # at most MAX_CONNECTIONS: one per slot
        else:
            conn.writer.close()


async def _read_response(conn: _Conn) -> tuple[int, bytes]:
    status = 0
    body = bytearray()
    got_any = False
    while True:
        event = conn.http.next_event()
        if event is h11.NEED_DATA:
            data = await conn.reader.read(READ_SIZE)
            if not data and not got_any:
                raise _Stale("closed before answering")
            got_any = True
            conn.http.receive_data(data)
        elif isinstance(event, h11.Response):
            status = event.status_code
        elif isinstance(event, h11.Data):
            body += event.data
            if len(body) > MAX_BODY:
                raise h11.RemoteProtocolError("response body too large")
        elif isinstance(event, h11.EndOfMessage):
            return status, bytes(body)
        elif isinstance(event, h11.ConnectionClosed):
            raise ConnectionResetError("closed mid-answer")
        # InformationalResponse (1xx): skip, the final answer follows


def _error_code(doc: object) -> str:
    err = doc.get("error") if isinstance(doc, dict) else None
    code = err.get("code") if isinstance(err, dict) else None
    return code if isinstance(code, str) else ""


def _why(e: BaseException) -> str:
    """The cause in a few words, and never an address (asyncio's connect errors name it)."""
    if isinstance(e, OSError):
        return os.strerror(e.errno) if e.errno else type(e).__name__
    return type(e).__name__ if not str(e) else str(e)[:200]
