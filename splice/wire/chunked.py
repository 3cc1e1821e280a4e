"""Chunked transfer coding (RFC 9112 §7.1), tracked over bytes forwarded verbatim.

splice does not decode a chunked body: it passes every byte on as the client sent
it, and only needs to know where the body ends (to read the next request head) and
how much chunk data follows a size line (so big chunks can be spliced zero-copy).
Malformed framing raises ``ProtocolError``; a smuggler gets nowhere.
"""

from __future__ import annotations

import re
from enum import Enum

from splice.errors import ProtocolError

#: a chunk-size line with extensions, or one trailer field; h11 allows 16 KiB for
#: a whole head, and no honest client sends a 4 KiB chunk extension
MAX_LINE = 4096
#: 16 hex digits is 2**64: more is an overflow attempt
MAX_SIZE_DIGITS = 16
#: a size must fit a signed 64-bit count (the compiled copy loop's ``Py_ssize_t``);
#: no chunk is 8 EiB
MAX_SIZE = (1 << 63) - 1

# chunk = chunk-size [ chunk-ext ] CRLF ; chunk-size = 1*HEXDIG
# chunk-ext = *( BWS ";" BWS chunk-ext-name [ BWS "=" BWS chunk-ext-val ] )
_SIZE_LINE = re.compile(
    rb"([0-9A-Fa-f]{1,%d})(?:[ \t]*;[\t\x20-\x7e\x80-\xff]*)?" % MAX_SIZE_DIGITS
)
# trailer-section = *( field-line CRLF )
_TRAILER = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+:[\t\x20-\x7e\x80-\xff]*")


class State(Enum):
    SIZE = 1
    DATA = 2
    DATA_END = 3
    TRAILER = 4
    DONE = 5


class ChunkedFraming:
    __slots__ = ("remaining", "state")

    def __init__(self) -> None:
        self.state = State.SIZE
        #: chunk-data bytes still to come in the current chunk
        self.remaining = 0

    def scan(self, data: bytes | bytearray | memoryview) -> int:
        """How many leading bytes of ``data`` belong to the body (all forwarded as-is).

        Stops at the end of the body (``state`` is DONE) or where ``data`` ends in
        the middle of a line, which the caller keeps and offers again with more.
        """
        pos, n = 0, len(data)
        while pos < n and self.state is not State.DONE:
            if self.state is State.DATA:
                take = min(self.remaining, n - pos)
                pos += take
                self.data_passed(take)
                continue
            window = bytes(data[pos : pos + MAX_LINE + 2])
            eol = window.find(b"\r\n")
            if eol < 0:
                if n - pos > MAX_LINE:
                    raise ProtocolError("chunk framing line too long")
                if b"\n" in window:  # no CRLF anywhere, so this LF is bare: say so now
                    raise ProtocolError("chunk framing line ends in a bare LF")
                break
            self._line(bytes(data[pos : pos + eol]))
            pos += eol + 2
        return pos

    def data_passed(self, count: int) -> None:
        """Record ``count`` chunk-data bytes forwarded without ``scan`` (spliced)."""
        self.remaining -= count
        if self.remaining == 0:
            self.state = State.DATA_END

    def _line(self, line: bytes) -> None:
        if self.state is State.SIZE:
            m = _SIZE_LINE.fullmatch(line)
            if m is None:
                raise ProtocolError("bad chunk size line")
            self.remaining = int(m.group(1), 16)
            if self.remaining > MAX_SIZE:
                raise ProtocolError("chunk size too large")
            self.state = State.DATA if self.remaining else State.TRAILER
        elif self.state is State.DATA_END:
            if line:
                raise ProtocolError("chunk data longer than its size")
            self.state = State.SIZE
        elif not line:
            self.state = State.DONE
        elif _TRAILER.fullmatch(line) is None:
            raise ProtocolError("bad trailer field")
