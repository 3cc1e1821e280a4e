"""HTTP/1.1 response head -> where its body ends, for reusing an upstream connection.

splice keeps a VM connection for the next client only when it knows, from the
response head alone, exactly where the response ends (RFC 9112 §6.3): no body
(a HEAD request, 1xx, 204, 304), a single Content-Length, or ``chunked``. Anything
else (a body that runs to close, an HTTP/1.0 or ``Connection: close`` response, a
head this strict scanner does not take whole) is relayed exactly as before and the
connection is closed afterwards: reuse is an optimisation, never a guess.

The two Connection-field rewrites live here too: the request loses its
``Connection`` fields (the client's ``close`` is for splice, not for the VM), and
the final response gains ``Connection: close`` (splice closes the client after it).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from enum import IntEnum
from typing import Final

from splice.errors import ProtocolError
from splice.wire.field_lines import FIELD_BLOCK, field_finder, find_fields
from splice.wire.http_head import MAX_CL_DIGITS, MAX_HEAD

# status-line = HTTP-version SP status-code SP [ reason-phrase ]   (RFC 9112 §4);
# a missing SP before an empty reason is common and harmless
_STATUS_LINE: Final = rb"HTTP/1\.([01]) ([1-5][0-9]{2})(?: [\t\x20-\x7e\x80-\xff]*)?\r\n"
#: a head the scanner takes whole, up to its blank line: one regex pass, not two
_STRICT_HEAD: Final = re.compile(_STATUS_LINE + FIELD_BLOCK.pattern)
_FRAMING_NAMES: Final[tuple[bytes, ...]] = (b"content-length", b"transfer-encoding", b"connection")
_FRAMING_FIELDS: Final = field_finder(_FRAMING_NAMES)
#: every Connection field line, with the CRLF before it (never the status line)
_CONNECTION_LINE: Final = re.compile(rb"\r\nconnection:[^\r]*", re.I)
_CLOSE: Final = b"Connection: close\r\n\r\n"


#: ``scan_response(buf, max_head, names) -> (minor, status, fields, raw) | None``
Scanner = Callable[
    [bytes | bytearray, int, tuple[bytes, ...]],
    tuple[bytes, int, list[tuple[bytes, bytes]], bytes] | None,
]


def _c_scanner() -> Scanner | None:
    try:
        from splice.wire._head_scan import scan_response
    except ImportError:  # an interpreted install: the regex passes do it
        return None
    return scan_response


#: the C scanner (``_head_scan.c``), or None. Not Final: the tests run with and without it
SCAN: Scanner | None = _c_scanner()


class Body(IntEnum):
    NONE = 0
    LENGTH = 1
    CHUNKED = 2
    #: ends when the VM closes: the connection cannot be reused
    UNTIL_CLOSE = 3


class ResponseHead:
    """A parsed response head; a plain class for mypyc, like ``http_head.Head``."""

    __slots__ = ("body", "interim", "keep_alive", "length", "raw", "size", "status")

    def __init__(
        self,
        status: int,
        body: Body,
        length: int,
        keep_alive: bool,
        interim: bool,
        raw: bytes,
        size: int,
    ) -> None:
        self.status = status
        self.body = body
        #: Content-Length when ``body`` is LENGTH, else 0
        self.length = length
        #: the VM keeps the connection open after this response
        self.keep_alive = keep_alive
        #: a 1xx other than 101: forwarded as is, the real response follows
        self.interim = interim
        #: the head as the client gets it
        self.raw = raw
        #: bytes of the input the head took
        self.size = size

    def __repr__(self) -> str:  # the fields a failing test wants to see
        return (
            f"ResponseHead(status={self.status}, body={self.body!r}, length={self.length}, "
            f"keep_alive={self.keep_alive}, interim={self.interim}, size={self.size})"
        )


def parse_response_head(
    buf: bytes | bytearray, *, head_request: bool, max_head: int = MAX_HEAD, close: bool = True
) -> ResponseHead | None:
    """Parse one response head from the start of ``buf``; None until it is complete.

    ``close``: the client's connection ends with this response, so ``raw`` says
    ``Connection: close`` in place of the VM's Connection fields; else ``raw`` is the
    head as the VM sent it.

    Raises:
        ProtocolError: the head is not one this scanner takes whole (bare LF, a
            malformed or oversized head, conflicting framing fields). The caller
            then relays the bytes untouched and does not reuse the connection.
    """
    scan = SCAN  # one look in the module's dict, not two
    got = (
        scan_strict(buf, max_head, _FRAMING_NAMES)
        if scan is None
        else scan(buf, max_head, _FRAMING_NAMES)
    )
    if got is None:
        if buf.find(b"\r\n\r\n", 0, max_head) >= 0:
            raise ProtocolError("malformed response head")
        if len(buf) >= max_head or buf.find(b"\n\n", 0, max_head) >= 0:
            raise ProtocolError("response head not taken by the strict scanner")
        return None
    minor, status, fields, head = got
    size = len(head)
    if 100 <= status < 200 and status != 101:
        if any(name != b"connection" for name, _ in fields):
            # RFC 9110 §8.6, §6.4.1: a 1xx carries no length. One that does may be taken
            # for the final answer by a client (nginx does): not ours to pass on
            raise ProtocolError("an interim response with Content-Length or Transfer-Encoding")
        return ResponseHead(status, Body.NONE, 0, True, True, head, size)
    keep_alive = minor == b"1"
    length: int | None = None
    chunked = False
    for name, value in fields:
        if name == b"connection":
            # the values come lower-cased; the common one costs no token split
            if value != b"keep-alive":
                keep_alive = keep_alive and b"close" not in {t.strip() for t in value.split(b",")}
        elif name == b"transfer-encoding":
            if chunked or value != b"chunked":
                raise ProtocolError("only a single 'Transfer-Encoding: chunked' is framed")
            chunked = True
        else:
            # bytes.isdigit: ASCII digits only, as the regex was (cheaper than a match)
            if length is not None or not value.isdigit() or len(value) > MAX_CL_DIGITS:
                raise ProtocolError("Content-Length must be one decimal number")
            length = int(value)
    if chunked and length is not None:
        raise ProtocolError("both Content-Length and Transfer-Encoding")
    if status == 101:
        return ResponseHead(status, Body.UNTIL_CLOSE, 0, False, False, head, size)
    raw = _CONNECTION_LINE.sub(b"", head[:-2]) + _CLOSE if close else head
    if head_request or status in (204, 304):
        return ResponseHead(status, Body.NONE, 0, keep_alive, False, raw, size)
    if chunked:
        return ResponseHead(status, Body.CHUNKED, 0, keep_alive, False, raw, size)
    if length is not None:
        return ResponseHead(status, Body.LENGTH, length, keep_alive, False, raw, size)
    return ResponseHead(status, Body.UNTIL_CLOSE, 0, False, False, raw, size)


def scan_strict(
    buf: bytes | bytearray, max_head: int, names: tuple[bytes, ...]
) -> tuple[bytes, int, list[tuple[bytes, bytes]], bytes] | None:
    """The strict scanner as two regex passes: the twin of the C ``scan_response``, with
    its signature. ``names`` must be ``_FRAMING_NAMES``, which the compiled finder picks."""
    assert names == _FRAMING_NAMES
    end = buf.find(b"\r\n\r\n", 0, max(max_head, 0))  # a negative end is not from the end
    if end < 0:
        return None
    head = bytes(buf[: end + 4])
    m = _STRICT_HEAD.fullmatch(head, 0, end + 2)
    if m is None:
        return None
    fields = find_fields(head.lower(), 0, end, _FRAMING_FIELDS)
    return m.group(1), int(m.group(2)), fields, head


def without_connection_fields(raw: bytes) -> bytes:
    """A request head with its Connection fields removed (the VM keeps the connection)."""
    return _CONNECTION_LINE.sub(b"", raw)
