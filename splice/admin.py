"""The admin listener: a tiny HTTP/1.1 server (h11 on ``asyncio.start_server``).

``GET /healthz``  200 while the process runs.
``GET /readyz``   200 when listeners are bound and the resolver can answer, else 503.
``GET /metrics``  Prometheus text (``splice.exposition``); summed over workers.
``GET /routes``   JSON: listeners, configured sheds, resolver cache (``splice.routes``).
``POST /reload``  re-read the config file, like SIGHUP: 200, or 400 with the error.
What answers is a ``Backend``: the server itself (one process) or the supervisor.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any, Protocol

import h11
from prometheus_client import CONTENT_TYPE_LATEST

from splice import __version__
from splice.exposition import render

log = logging.getLogger("splice.admin")

#: admin requests are a line and a few headers; anything bigger is not one
MAX_HEAD = 16 * 1024
#: /reload takes no body; a few KiB are read and dropped, more closes the connection
MAX_BODY = 64 * 1024
#: a scraper keeps its connection open between scrapes (Prometheus: every 15 s or so)
IDLE_TIMEOUT = 60.0
#: one request (including a readiness probe of shed-server) must not take longer
REQUEST_TIMEOUT = 10.0

Answer = tuple[int, str, bytes]
_TEXT = "text/plain; charset=utf-8"


class Backend(Protocol):
    async def ready(self) -> tuple[bool, str]: ...
    async def snapshot(self) -> dict[str, Any]: ...
    async def routes(self) -> dict[str, Any]: ...
    async def reload(self) -> str | None:
        """None when the new config is running; else why it was refused."""
        ...


class AdminServer:
    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self.address: tuple[str, int] = ("", 0)

    async def start(self, host: str, port: int) -> None:
        self._server = await asyncio.start_server(self._client, host, port)
        self.address = self._server.sockets[0].getsockname()[:2]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for w in list(self._writers):
            w.close()
        if self._server is not None:
            await self._server.wait_closed()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
        try:
            while await self._one(conn, reader, writer):
                conn.start_next_cycle()
        except (h11.ProtocolError, OSError, TimeoutError):
            pass  # a bad or silent client costs its own connection only
        finally:
            self._writers.discard(writer)
            writer.close()

    async def _one(
        self, conn: h11.Connection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        """Serve one request; True when the connection may carry another."""
        async with asyncio.timeout(IDLE_TIMEOUT):
            request = await _next(conn, reader, h11.Request)
        if request is None:
            return False
        async with asyncio.timeout(REQUEST_TIMEOUT):
            if await _next(conn, reader, h11.EndOfMessage) is None:
                return False
            try:
                status, ctype, body = await self.answer(request.method.decode(), request.target)
            except Exception:  # a bug here must cost one admin request, not the process
                log.exception("admin request %s failed", request.target[:100])
                status, ctype, body = 500, _TEXT, b"internal error; see the log\n"

        headers = [
            ("Content-Type", ctype),
            ("Content-Length", str(len(body))),
            ("Server", f"splice/{__version__}"),
            ("Cache-Control", "no-store"),
        ]
        out = conn.send(h11.Response(status_code=status, headers=headers))
        if request.method != b"HEAD":  # a HEAD answer has the GET's headers and no body
            out += conn.send(h11.Data(data=body))
        writer.write(out + conn.send(h11.EndOfMessage()))
        await writer.drain()
        return conn.our_state is h11.DONE and conn.their_state is h11.DONE

    async def answer(self, method: str, target: bytes) -> Answer:
        path = target.decode("latin-1").partition("?")[0]
        want = "POST" if path == "/reload" else "GET"
        if path not in ("/healthz", "/readyz", "/metrics", "/routes", "/reload"):
            return 404, _TEXT, b"not found; try /healthz /readyz /metrics /routes /reload\n"
        if method != want and not (method == "HEAD" and want == "GET"):
            return 405, _TEXT, f"use {want}\n".encode()
        if path == "/healthz":
            return 200, _TEXT, b"ok\n"
        if path == "/readyz":
            ok, why = await self.backend.ready()
            return (
                (200 if ok else 503),
                _TEXT,
                f"{'ready' if ok else 'not ready'}\n{why}\n".encode(),
            )
        if path == "/metrics":
            return 200, CONTENT_TYPE_LATEST, render(await self.backend.snapshot())
        if path == "/routes":
            doc = await self.backend.routes()
            return 200, "application/json", json.dumps(doc, indent=1).encode() + b"\n"
        error = await self.backend.reload()
        if error is None:
            return 200, _TEXT, b"reloaded\n"
        return 400, _TEXT, f"reload refused: {error}\n".encode()


async def _next(conn: h11.Connection, reader: asyncio.StreamReader, kind: type[Any]) -> Any:
    """The next event of type ``kind`` (body Data skipped up to MAX_BODY); None at close."""
    skipped = 0
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            data = await reader.read(65536)
            conn.receive_data(data)
        elif isinstance(event, kind):
            return event
        elif isinstance(event, h11.Data):
            skipped += len(event.data)
            if skipped > MAX_BODY:
                return None
        elif isinstance(event, h11.ConnectionClosed):
            return None
        else:
            with contextlib.suppress(h11.LocalProtocolError):
                conn.send_failed()
            return None
