"""The admin listener: a tiny HTTP/1.1 server (h11 on ``asyncio.start_server``).

``GET /healthz``  200 while the process runs.
``GET /readyz``   200 when listeners are bound and the resolver can answer, else 503.
``GET /metrics``  Prometheus text (``splice.exposition``); summed over workers.
``GET /routes``   JSON: listeners, configured sheds, resolver cache (``splice.routes``).
``POST /reload``  re-read the config file, like SIGHUP: 200, or 400 with the error.
What answers is a ``Backend``: the server itself (one process) or the supervisor.

Before any of that, a request a browser may have sent on a web page's behalf is refused
with 403: a Host that names neither loopback (``localhost``, ``127.0.0.1``, ``[::1]``),
the configured address, the address the connection came in on, nor ``allowed_hosts``
(DNS rebinding), or an ``Origin`` that is not this listener (a cross-site POST). With
``token_file`` every endpoint but ``/healthz`` then asks for ``Authorization: Bearer``
(401 without it). Either answer leaves the connection open, like any other: the request
was read whole, and a client may try again on it with what was missing.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
from typing import Any, Protocol

import h11
from prometheus_client import CONTENT_TYPE_LATEST

from splice import __version__
from splice.config_ops import LOOPBACK_NAMES, AdminConfig, canonical_host
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
    def __init__(self, backend: Backend, cfg: AdminConfig) -> None:
        self.backend = backend
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self.address: tuple[str, int] = ("", 0)
        self._names = {*LOOPBACK_NAMES, canonical_host(cfg.host), *cfg.allowed_hosts}
        self._token = None if cfg.token is None else cfg.token.encode()

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
        local = canonical_host(str(writer.get_extra_info("sockname")[0]))
        try:
            while await self._one(conn, reader, writer, local):
                conn.start_next_cycle()
        except (h11.ProtocolError, OSError, TimeoutError):
            pass  # a bad or silent client costs its own connection only
        finally:
            self._writers.discard(writer)
            writer.close()

    async def _one(
        self,
        conn: h11.Connection,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        local: str,
    ) -> bool:
        """Serve one request (``local``: the address it came in on); True when the
        connection may carry another."""
        async with asyncio.timeout(IDLE_TIMEOUT):
            request = await _next(conn, reader, h11.Request)
        if request is None:
            return False
        async with asyncio.timeout(REQUEST_TIMEOUT):
            if await _next(conn, reader, h11.EndOfMessage) is None:
                return False
            try:
                refused = self._refuse(request, local)
                status, ctype, body = refused or await self.answer(
                    request.method.decode(), request.target
                )
            except Exception:  # a bug here must cost one admin request, not the process
                log.exception("admin request %s failed", request.target[:100])
                status, ctype, body = 500, _TEXT, b"internal error; see the log\n"

        headers = [
            ("Content-Type", ctype),
            ("Content-Length", str(len(body))),
            ("Server", f"splice/{__version__}"),
            ("Cache-Control", "no-store"),
        ]
        if status == 401:
            headers.append(("WWW-Authenticate", "Bearer"))
        out = conn.send(h11.Response(status_code=status, headers=headers))
        if request.method != b"HEAD":  # a HEAD answer has the GET's headers and no body
            out += conn.send(h11.Data(data=body))
        writer.write(out + conn.send(h11.EndOfMessage()))
        await writer.drain()
        return conn.our_state is h11.DONE and conn.their_state is h11.DONE

    def _refuse(self, request: h11.Request, local: str) -> Answer | None:
        """403 for a Host or Origin that is not this listener, 401 without the token."""
        port = self.address[1]
        names = {*self._names, local}
        for value in _fields(request, b"host"):
            split = _authority(value)
            if split is None or split[0] not in names or split[1] not in (None, port):
                why = f"Host {value[:100]!r} is not this admin listener (see [admin] allowed_hosts)"
                return 403, _TEXT, f"forbidden: {why}\n".encode()
        for value in _fields(request, b"origin"):
            split = _origin(value)
            if split is None or split[0] not in names or split[1] != port:
                why = f"Origin {value[:100]!r}: a web page may not use the admin listener"
                return 403, _TEXT, f"forbidden: {why}\n".encode()
        if self._token is None or request.target.partition(b"?")[0] == b"/healthz":
            return None
        auth = _fields(request, b"authorization")
        scheme, _, given = auth[0].partition(" ") if len(auth) == 1 else ("", "", "")
        if scheme.lower() == "bearer" and hmac.compare_digest(
            given.strip().encode("latin-1"), self._token
        ):
            return None
        return 401, _TEXT, b"unauthorized: send Authorization: Bearer <[admin] token_file>\n"

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


def _fields(request: h11.Request, name: bytes) -> list[str]:
    return [v.decode("latin-1") for k, v in request.headers if k == name]


def _authority(text: str) -> tuple[str, int | None] | None:
    """``host[:port]`` or ``[v6][:port]``: (the canonical host, the port or None); None
    when it is neither."""
    if text.startswith("["):
        name, bracket, rest = text[1:].partition("]")
        if not bracket or ":" not in name:
            return None
    else:
        name, colon, digits = text.partition(":")
        rest = colon + digits
    digits = rest[1:]
    if rest and not (rest[0] == ":" and digits.isascii() and digits.isdigit() and len(digits) <= 5):
        return None
    return canonical_host(name), int(digits) if rest else None


def _origin(text: str) -> tuple[str, int] | None:
    """An Origin field's host and port (the scheme's own when it gives none)."""
    scheme, sep, authority = text.partition("://")
    default = {"http": 80, "https": 443}.get(scheme.lower())
    split = _authority(authority) if sep else None
    if split is None or default is None:
        return None
    name, port = split
    return name, default if port is None else port


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
