"""One request as the store sees it, and fetching it from the origin with h11.

``read_request`` takes a request off the client connection with its whole body
spooled (memory, then a temp file) and hashed, because the body is part of the key
and a miss may have to send it upstream again. ``Upstreams`` keeps one keep-alive
connection per client connection; a reused connection that fails before any response
byte is redialled once (the spooled body can be sent again).
"""

from __future__ import annotations

import asyncio
import hashlib
import ssl
import tempfile
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from typing import IO

import h11

from splice.egress.authority import render_authority
from splice.errors import BackendError, ProtocolError
from splice.store.h11io import READ_SIZE, Event, HttpStream

#: request bodies up to this stay in memory; bigger ones spill to a temp file
SPOOL_MEMORY = 1024 * 1024
#: a request body is spooled whole; beyond this it is refused (uploads are not builds)
MAX_REQUEST_BODY = 1024**3
#: methods that may be sent again when a reused connection turns out to be dead
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})
#: fields that describe one hop, never forwarded or recorded (RFC 9110 §7.6.1)
HOP_FIELDS = frozenset(
    b"connection keep-alive proxy-connection proxy-authorization proxy-authenticate te "
    b"trailer transfer-encoding upgrade".split()
)


@dataclass(slots=True)
class Incoming:
    method: str
    scheme: str
    host: str
    port: int
    #: origin-form target as sent (path and query)
    target: str
    url: str
    headers: list[tuple[bytes, bytes]]
    body: IO[bytes] = field(default_factory=lambda: tempfile.SpooledTemporaryFile(SPOOL_MEMORY))  # noqa: SIM115
    body_size: int = 0
    body_sha256: str = hashlib.sha256().hexdigest()
    #: the store key, once ``answer`` has computed it (the access line names it)
    key: str = ""

    @property
    def authority(self) -> bytes:
        return render_authority(self.host, self.port, {"http": 80, "https": 443}[self.scheme])


def first_field(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    """The first value of field ``name`` (lower-case), or None."""
    return next((v for n, v in headers if n.lower() == name), None)


def end_to_end(
    headers: list[tuple[bytes, bytes]], drop: frozenset[bytes] = frozenset()
) -> list[tuple[bytes, bytes]]:
    """``headers`` without hop-by-hop fields (and those named in Connection) or ``drop``."""
    named = {
        token.strip().lower()
        for name, value in headers
        if name.lower() == b"connection"
        for token in value.split(b",")
    }
    gone = HOP_FIELDS | named | drop
    return [(n, v) for n, v in headers if n.lower() not in gone]


async def read_body(client: HttpStream, inc: Incoming, timeout: float) -> None:
    """Spool and hash the request body (answering ``Expect: 100-continue``)."""
    if client.conn.they_are_waiting_for_100_continue:
        await client.send(h11.InformationalResponse(status_code=100, headers=[]))
    digest = hashlib.sha256()
    for _ in range(MAX_REQUEST_BODY // 1024 + 2):  # Data events carry at least a byte or so
        event = await client.next_event(timeout)
        if isinstance(event, h11.EndOfMessage):
            inc.body_sha256 = digest.hexdigest()
            inc.body.seek(0)
            return
        if not isinstance(event, h11.Data):
            raise ProtocolError("the request body ended early")
        inc.body_size += len(event.data)
        if inc.body_size > MAX_REQUEST_BODY:
            raise ProtocolError("the request body is too large to record")
        digest.update(event.data)
        inc.body.write(event.data)
    raise ProtocolError("the request body arrives in too many pieces")


def upstream_request(inc: Incoming) -> h11.Request:
    """The request as the origin gets it: origin-form, our Host, exact Content-Length."""
    had_body = inc.body_size or any(
        n.lower() in (b"content-length", b"transfer-encoding") for n, _ in inc.headers
    )
    headers = [(b"Host", inc.authority)]
    headers += end_to_end(inc.headers, frozenset({b"host", b"content-length", b"expect"}))
    if had_body:
        headers.append((b"Content-Length", str(inc.body_size).encode()))
    return h11.Request(method=inc.method, target=inc.target.encode("latin-1"), headers=headers)


class Upstreams:
    """The origin side of one client connection: at most one idle keep-alive stream."""

    def __init__(self, tls: ssl.SSLContext, connect_timeout: float, timeout: float) -> None:
        self.tls = tls
        self.connect_timeout = connect_timeout
        self.timeout = timeout
        self._idle: tuple[tuple[str, str, int, str], HttpStream] | None = None

    async def fetch(self, inc: Incoming, addr: str) -> tuple[HttpStream, h11.Response]:
        """Send ``inc`` to ``addr`` and read the response head (1xx skipped)."""
        ident = (inc.scheme, inc.host, inc.port, addr)
        idle, self._idle = self._idle, None
        if idle is not None and idle[0] == ident and inc.method in IDEMPOTENT:
            try:
                return idle[1], await self._exchange(idle[1], inc)
            except (OSError, h11.ProtocolError, BackendError, TimeoutError):
                await idle[1].close()  # stale keep-alive: one fresh try below
        elif idle is not None:
            await idle[1].close()
        up = await self._dial(inc, addr)
        try:
            return up, await self._exchange(up, inc)
        except BaseException:
            await up.close()
            raise

    async def release(self, up: HttpStream, inc: Incoming, addr: str) -> None:
        """Keep ``up`` for the next request if both sides finished cleanly, else close it."""
        if up.conn.our_state is h11.DONE and up.conn.their_state is h11.DONE:
            up.conn.start_next_cycle()
            self._idle = ((inc.scheme, inc.host, inc.port, addr), up)
        else:
            await up.close()

    async def close(self) -> None:
        idle, self._idle = self._idle, None
        if idle is not None:
            await idle[1].close()

    async def _dial(self, inc: Incoming, addr: str) -> HttpStream:
        tls = self.tls if inc.scheme == "https" else None
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(
                    addr, inc.port, ssl=tls, server_hostname=inc.host if tls else None
                ),
                self.connect_timeout,
            )
        except TimeoutError:
            raise BackendError(
                f"{inc.host}:{inc.port} did not answer", code="UPSTREAM_TIMEOUT"
            ) from None
        except ssl.SSLError as e:
            raise BackendError(f"TLS with {inc.host}:{inc.port} failed: {e.reason}") from None
        except OSError as e:
            raise BackendError(f"{inc.host}:{inc.port}: {e.strerror or e}") from None
        return HttpStream(reader, writer, h11.CLIENT, self.timeout)

    async def _exchange(self, up: HttpStream, inc: Incoming) -> h11.Response:
        inc.body.seek(0)
        await up.send(upstream_request(inc))
        while chunk := inc.body.read(READ_SIZE):
            await up.send(h11.Data(data=chunk))
        await up.send(h11.EndOfMessage())
        for _ in range(100):  # 1xx responses before the final one; 100 is already absurd
            event = await upstream_event(up, self.timeout)
            if isinstance(event, h11.Response):
                return event
            if not isinstance(event, h11.InformationalResponse):
                raise BackendError(f"{inc.host}:{inc.port} closed without a response")
        raise BackendError(f"{inc.host}:{inc.port} sent too many interim responses")


async def upstream_event(up: HttpStream, timeout: float) -> Event:
    """The origin's next event. Its protocol errors are the origin's (502 BackendError),
    never the client's: h11 calls them remote, as it does a client's bad request."""
    try:
        return await up.next_event(timeout)
    except h11.RemoteProtocolError as e:
        raise BackendError(f"the origin's answer is not valid HTTP/1.1: {e}") from None


async def response_body(up: HttpStream, timeout: float) -> AsyncIterator[bytes]:
    """The response body's bytes as they arrive (de-chunked); raises if it is cut short."""
    while True:
        event = await upstream_event(up, timeout)
        if isinstance(event, h11.EndOfMessage):
            return
        if not isinstance(event, h11.Data):
            raise BackendError("the origin closed the connection in the middle of the body")
        yield bytes(event.data)
