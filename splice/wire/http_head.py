"""HTTP/1.x request head -> ``Head``: the routing name, the target and the body framing.

Two readers, one answer. A strict scanner takes every head it fully understands;
anything else (bare-LF line ends, odd spacing) goes to h11, the reference parser, and
is re-serialised with CRLF so the VM never sees bytes we interpreted differently.
Differential tests prove that on every head the scanner accepts it extracts what h11
extracts. The strict scanner is two regex passes (sre, in C), or, in the compiled
build, one pass of hand-written C (``_head_scan.c``) that accepts exactly what they
accept; tests check the two agree.

On top of both, splice is stricter than h11 where a proxy must be (RFC 9112 §6.3,
request smuggling): obs-fold, Content-Length together with Transfer-Encoding, a
list or duplicate Content-Length, and any transfer-coding but ``chunked`` get 400.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Final

import h11

from splice.errors import ProtocolError
from splice.wire.field_lines import FIELD_BLOCK, field_finder, find_fields
from splice.wire.forwarded import FORWARDING_FIELDS

#: nginx allows 4 x 8 KiB header lines and h11 16 KiB; 64 KiB admits every real
#: browser head (large cookies included). Bigger gets 431.
MAX_HEAD: Final = 64 * 1024
#: 18 digits is h11's bound too: an int64 body length, and no overflow games
MAX_CL_DIGITS: Final = 18

# request-line = method SP request-target SP HTTP-version   (RFC 9112 §3)
# method = token ; request-target: visible ASCII (we never accept spaces in it)
_REQUEST_LINE: Final = rb"([!#$%&'*+\-.^_`|~0-9A-Za-z]+) ([\x21-\x7e]+) HTTP/1\.([01])\r\n"
#: a head the scanner takes whole, up to its blank line: one regex pass, not two
_STRICT_HEAD: Final = re.compile(_REQUEST_LINE + FIELD_BLOCK.pattern)
#: the fields routing and framing depend on, and the forwarding ones (noted so the
#: rewrite can skip looking for them)
_NAMES: Final[tuple[bytes, ...]] = (
    b"host", b"content-length", b"transfer-encoding", b"connection", b"upgrade", b"expect",
    b"accept", *FORWARDING_FIELDS,
)  # fmt: skip
_WANTED: Final = field_finder(_NAMES)
_DIGITS: Final = re.compile(rb"[0-9]{1,%d}" % MAX_CL_DIGITS)
# h11 ends a head at LF CR? LF; we find the same end to know what the head consumed
_H11_HEAD_END: Final = re.compile(rb"\n\r?\n")

#: ``scan_request(buf, max_head, names) -> (method, target, minor, fields, raw) | None``
Scanner = Callable[
    [bytes | bytearray, int, tuple[bytes, ...]],
    tuple[bytes, bytes, bytes, list[tuple[bytes, bytes]], bytes] | None,
]


def _c_scanner() -> Scanner | None:
    try:
        from splice.wire._head_scan import scan_request
    except ImportError:  # an interpreted install: the regex passes do it
        return None
    return scan_request


#: the C scanner, or None. Not Final: the tests run ``parse_head`` with and without it
SCAN: Scanner | None = _c_scanner()


class Head:
    """A parsed request head.

    A plain class, not a NamedTuple: compiled by mypyc, making one takes ~25 ns
    instead of ~180 (a NamedTuple's ``__new__`` is generated Python) and reading a
    field is a load from the object instead of a descriptor call; one per request.
    """

    __slots__ = (
        "chunked",
        "close",
        "content_length",
        "expect_continue",
        "forwarded",
        "host",
        "length",
        "method",
        "raw",
        "target",
        "upgrade",
        "version",
        "wants_json",
    )

    def __init__(
        self,
        method: bytes,
        target: bytes,
        version: bytes,
        host: bytes | None,
        content_length: int | None,
        chunked: bool,
        upgrade: bool,
        close: bool,
        expect_continue: bool,
        wants_json: bool,
        forwarded: bool,
        raw: bytes,
        length: int,
    ) -> None:
        self.method = method
        self.target = target
        #: b"1.1" or b"1.0"
        self.version = version
        #: the Host field (lower-cased), or None when absent
        self.host = host
        #: body length when framed by Content-Length, else None
        self.content_length = content_length
        self.chunked = chunked
        #: the client asks to switch protocols (Connection: upgrade + Upgrade)
        self.upgrade = upgrade
        #: the connection ends after this exchange (Connection: close, or HTTP/1.0)
        self.close = close
        self.expect_continue = expect_continue
        self.wants_json = wants_json
        #: the head has X-Forwarded-* or Forwarded fields
        self.forwarded = forwarded
        #: the head as it goes to the VM (the client's bytes on the fast path)
        self.raw = raw
        #: bytes of the input buffer the head took
        self.length = length

    def __repr__(self) -> str:  # the fields a failing test wants to see
        return (
            f"Head(method={self.method!r}, target={self.target!r}, host={self.host!r}, "
            f"content_length={self.content_length!r}, chunked={self.chunked}, "
            f"close={self.close}, upgrade={self.upgrade}, length={self.length})"
        )


def parse_head(buf: bytes | bytearray, max_head: int = MAX_HEAD) -> Head | None:
    """Parse one request head from the start of ``buf``; None until it is complete.

    Raises:
        ProtocolError: BAD_REQUEST for a malformed or smuggling-prone head,
            HEAD_TOO_LARGE when the head exceeds ``max_head``.
    """
    got = scan_strict(buf, max_head, _NAMES) if SCAN is None else SCAN(buf, max_head, _NAMES)
    if got is not None:
        method, target, minor, fields, raw = got
        return _interpret(method, target, minor, fields, raw, len(raw))
    end = buf.find(b"\r\n\r\n")
    if end < 0 or end > max_head - 4:
        return _incomplete(buf, max_head)
    return _parse_slow(buf, max_head)


def scan_strict(
    buf: bytes | bytearray, max_head: int, names: tuple[bytes, ...]
) -> tuple[bytes, bytes, bytes, list[tuple[bytes, bytes]], bytes] | None:
    """The strict scanner as two regex passes: the twin of the C ``scan_request``, with
    its signature. ``names`` must be ``_NAMES``, which the compiled finder picks."""
    assert names == _NAMES
    end = buf.find(b"\r\n\r\n")
    if end < 0 or end > max_head - 4:
        return None
    head = bytes(buf[: end + 4])
    m = _STRICT_HEAD.fullmatch(head, 0, end + 2)
    if m is None:
        return None
    method, target, minor = m.groups()
    return method, target, minor, find_fields(head.lower(), 0, end, _WANTED), head


def _incomplete(buf: bytes | bytearray, max_head: int) -> Head | None:
    if _H11_HEAD_END.search(buf, 0, max_head) is not None:
        return _parse_slow(buf, max_head)
    if len(buf) >= max_head:
        raise ProtocolError(f"request head over {max_head} bytes", code="HEAD_TOO_LARGE")
    return None


def _parse_slow(buf: bytes | bytearray, max_head: int) -> Head | None:
    """The h11 path, for heads the scanner does not take whole."""
    m = _H11_HEAD_END.search(buf, 0, max_head)
    assert m is not None  # callers found a head end (CRLF CRLF holds LF CRLF) within max_head
    data = bytes(buf[: m.end()])
    if re.search(rb"\n[ \t]", data):
        raise ProtocolError("obsolete line folding (obs-fold) is not accepted")
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=max_head)
    try:
        conn.receive_data(data)
        event = conn.next_event()
    except h11.RemoteProtocolError as e:
        raise ProtocolError(f"malformed request head: {e}") from None
    if not isinstance(event, h11.Request):
        raise ProtocolError("malformed request head")
    if event.http_version not in (b"1.0", b"1.1"):
        # h11 takes any HTTP/d.d; rewritten as 1.x the VM would get another request
        raise ProtocolError(f"HTTP/{event.http_version.decode()} is not relayed (1.0 and 1.1 are)")
    minor = event.http_version.split(b".")[1]
    raw_items = event.headers.raw_items()
    lines = [b"%s %s HTTP/1.%s\r\n" % (event.method, event.target, minor)]
    lines += [b"%s: %s\r\n" % (n, v) for n, v in raw_items]
    lines.append(b"\r\n")
    fields = [(n.lower(), v.lower()) for n, v in raw_items if n.lower() in _NAMES]
    return _interpret(event.method, event.target, minor, fields, b"".join(lines), m.end())


def _interpret(
    method: bytes,
    target: bytes,
    minor: bytes,
    fields: list[tuple[bytes, bytes]],
    raw: bytes,
    length: int,
) -> Head:
    host: bytes | None = None
    cl: int | None = None
    chunked = has_upgrade = conn_upgrade = close = expect = wants_json = False
    seen_te = forwarded = False
    for name, value in fields:
        if name == b"host":
            if host is not None:
                raise ProtocolError("more than one Host field")
            host = value
        elif name == b"content-length":
            if cl is not None or _DIGITS.fullmatch(value) is None:
                raise ProtocolError("Content-Length must be one decimal number")
            cl = int(value)
        elif name == b"transfer-encoding":
            if seen_te or value != b"chunked":
                raise ProtocolError("only a single 'Transfer-Encoding: chunked' is accepted")
            seen_te = chunked = True
        elif name == b"connection":
            tokens = {t.strip() for t in value.split(b",")}
            close = close or b"close" in tokens
            conn_upgrade = conn_upgrade or b"upgrade" in tokens
        elif name == b"upgrade":
            has_upgrade = True
        elif name == b"expect":
            expect = value == b"100-continue"
        elif name == b"accept":
            # find, not ``in``: bytes.__contains__ first tries the operand as an int,
            # which raises (and formats) a TypeError it then clears, ~1,700 instructions
            wants_json = wants_json or value.find(b"application/json") >= 0
        else:
            forwarded = True
    if chunked and cl is not None:
        raise ProtocolError("both Content-Length and Transfer-Encoding: smuggling risk")
    if minor == b"0":
        if chunked:
            raise ProtocolError("Transfer-Encoding is not allowed in HTTP/1.0")
        close = True
    elif host is None and method != b"CONNECT":
        raise ProtocolError("HTTP/1.1 request without a Host field")
    return Head(
        method, target, b"1." + minor, host, cl, chunked, has_upgrade and conn_upgrade,
        close, expect, wants_json, forwarded, raw, length,
    )  # fmt: skip
