"""Sans-IO codec for the shed-server Connect API dialer (``Upgrade: shed-tcp``).

``render_connect_request`` builds ``GET /api/sheds/NAME/connect/PORT`` with the upgrade
headers. ``parse_connect_response`` is fed the bytes read so far (re-parsed from the
start each call) and answers None (need more), ``(101, leftover)`` once switched, or
raises the SpliceError the shed-server's status means: 400 INVALID_PORT, 404
SHED_NOT_FOUND, 502 CONNECT_FAILED, 503 SHED_NOT_RUNNING, anything else CONNECT_FAILED,
using the JSON ``{"error": {"message"}}`` when a small body comes with it.
Pure: bytes in, bytes or an exception out; no sockets, no clock.
"""

from __future__ import annotations

import json
import re

import h11

from splice.errors import BackendError, RouteError, SpliceError

#: a response head longer than this is not a shed-server talking; h11 enforces it too
MAX_HEAD = 16 * 1024
#: error bodies are one small JSON object; larger ones are not waited for
MAX_BODY = 64 * 1024
#: error messages end up on a page; a sane bound keeps a hostile server from filling it
MAX_MESSAGE = 300
#: the upgrade token the shed-server answers to
UPGRADE = "shed-tcp"

#: shed-server's own name grammar (lower-case, starts with a letter, at most 63 chars)
_SHED_NAME = re.compile(r"[a-z](?:[a-z0-9-]{0,61}[a-z0-9])?")
#: host[:port] or [v6]:port as written in a Host header; nothing that could split a line
_HOST = re.compile(r"[A-Za-z0-9._\-]+(?::[0-9]{1,5})?|\[[0-9A-Fa-f:.]+\](?::[0-9]{1,5})?")
#: status -> (error class, code), from the shed-server's documented Connect errors
_STATUS: dict[int, tuple[type[SpliceError], str]] = {
    400: (RouteError, "INVALID_PORT"),
    404: (RouteError, "SHED_NOT_FOUND"),
    502: (BackendError, "CONNECT_FAILED"),
    503: (BackendError, "SHED_NOT_RUNNING"),
}
#: line breaks and other control characters never reach a page or a log line
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")


def render_connect_request(shed: str, port: int, host: str) -> bytes:
    """The upgrade request for ``shed``:``port``; ``host`` is the shed-server's Host.

    Raises:
        RouteError: SHED_NOT_FOUND for a name shed-server could never have made,
            INVALID_PORT for a port outside 1..65535.
        SpliceError: INTERNAL_ERROR for a Host that could not be a header value.
    """
    if _SHED_NAME.fullmatch(shed) is None:
        raise RouteError(f"There is no shed named {shed!r}.", code="SHED_NOT_FOUND", shed=shed)
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise RouteError(f"Port {port!r} is not valid.", code="INVALID_PORT", shed=shed)
    if len(host) > 261 or _HOST.fullmatch(host) is None:
        raise SpliceError(f"shed-server host {host!r} is not a valid Host", code="INTERNAL_ERROR")
    return (
        f"GET /api/sheds/{shed}/connect/{port} HTTP/1.1\r\n"
        f"Host: {host}\r\nConnection: Upgrade\r\nUpgrade: {UPGRADE}\r\n\r\n"
    ).encode("ascii")


def parse_connect_response(buf: bytes, *, eof: bool = False) -> tuple[int, bytes] | None:
    """``(101, bytes after the head)``, or None while the answer is incomplete.

    ``eof=True`` says no more bytes will come: an incomplete answer then raises.

    Raises:
        RouteError, BackendError: the error the status (and JSON body) names;
            BackendError CONNECT_FAILED for a malformed, oversized or truncated answer.
    """
    conn = _client()
    if buf:
        conn.receive_data(bytes(buf))  # h11 reads b"" as end of stream
    if eof:
        conn.receive_data(b"")
    return _walk(conn, eof)


def _client() -> h11.Connection:
    """An h11 client that has "sent" the upgrade request, ready to read the answer."""
    conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEAD)
    headers = [("Host", "shed"), ("Connection", "Upgrade"), ("Upgrade", UPGRADE)]
    conn.send(h11.Request(method="GET", target="/", headers=headers))
    conn.send(h11.EndOfMessage())
    return conn


def _walk(conn: h11.Connection, eof: bool) -> tuple[int, bytes] | None:
    status = 0
    body = bytearray()
    while True:
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError:
            if not eof:
                raise BackendError(
                    "The shed-server sent a malformed Connect answer.", code="CONNECT_FAILED"
                ) from None
            event = h11.ConnectionClosed()  # cut short: a head or body ended by EOF
        if isinstance(event, h11.InformationalResponse):
            if event.status_code == 101:
                return 101, conn.trailing_data[0]
            continue  # 100 Continue and friends: the real answer follows
        if isinstance(event, h11.Response):
            status = event.status_code
            if not _body_worth_waiting_for(event):
                raise _error(status, b"")
        elif isinstance(event, h11.Data):
            body += event.data
            if len(body) > MAX_BODY:
                raise _error(status, b"")
        elif isinstance(event, h11.EndOfMessage):
            raise _error(status, bytes(body))
        elif event is h11.NEED_DATA and not eof:
            return None
        else:  # NEED_DATA at EOF, ConnectionClosed, PAUSED: the answer was cut short
            raise _error(status, b"") if status else _closed()


def _closed() -> BackendError:
    return BackendError(
        "The shed-server closed the connection before answering.", code="CONNECT_FAILED"
    )


def _body_worth_waiting_for(response: h11.Response) -> bool:
    """Only a framed body of at most MAX_BODY bytes; never wait for a close."""
    length: bytes | None = None
    for name, value in response.headers:
        if name == b"transfer-encoding":
            return True  # chunked (h11 rejects others); Data events are bounded by MAX_BODY
        if name == b"content-length":
            length = value
    return length is not None and int(length) <= MAX_BODY


def _error(status: int, body: bytes) -> SpliceError:
    cls, code = _STATUS.get(status, (BackendError, "CONNECT_FAILED"))
    api_code, message = _json_error(body)
    if status == 400 and api_code == "INVALID_SHED_NAME":
        cls, code = RouteError, "SHED_NOT_FOUND"  # no shed can have that name
    if not message:
        message = f"The shed-server refused the connection (HTTP {status})."
    return cls(message, code=code)


def _json_error(body: bytes) -> tuple[str, str]:
    """(code, message) from ``{"error": {"code", "message"}}``, or empty strings."""
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError):  # RecursionError: absurdly nested JSON
        return "", ""
    err = doc.get("error") if isinstance(doc, dict) else None
    if not isinstance(err, dict):
        return "", ""
    code, message = err.get("code"), err.get("message")
    code = code if isinstance(code, str) else ""
    message = _CONTROL.sub(" ", message).strip() if isinstance(message, str) else ""
    return code, message[:MAX_MESSAGE]
