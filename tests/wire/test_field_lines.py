"""Field-line scanning shared by the request and response parsers, against plain oracles.

The oracle is the straightforward regex the scanner replaced, a findall anchored with
``^`` in multiline mode: the CRLF-anchored one must give exactly what it gives, on
every head the strict block check takes.
"""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from splice.wire.field_lines import FIELD_BLOCK, field_finder, find_fields

NAMES = (b"host", b"content-length", b"connection")
ORACLE = re.compile(rb"^(host|content-length|connection):[ \t]*([^\r]*?)[ \t]*\r$", re.M)

_NAME = st.one_of(
    st.sampled_from([b"Host", b"HOST", b"host", b"Content-Length", b"connection", b"Connection"]),
    st.sampled_from([b"Hostx", b"X-Host", b"Connection-Extra", b"Content-Lengthy", b"Accept"]),
    st.text(alphabet="abcHOST-!#", min_size=1, max_size=8).map(str.encode),
)
_VALUE = st.binary(max_size=20).map(
    lambda b: bytes(c for c in b if c == 9 or 0x20 <= c <= 0x7E or c >= 0x80)
)
_LINE = st.tuples(_NAME, _VALUE).map(lambda nv: nv[0] + b":" + nv[1])


def head_of(lines: list[bytes]) -> bytes:
    return b"HTTP/1.1 200 OK\r\n" + b"".join(line + b"\r\n" for line in lines) + b"\r\n"


@settings(max_examples=500)
@given(st.lists(_LINE, max_size=8))
def test_find_fields_gives_what_the_multiline_findall_gives(lines: list[bytes]) -> None:
    head = head_of(lines)
    end = head.find(b"\r\n\r\n")
    line_end = head.find(b"\r\n")
    assert FIELD_BLOCK.fullmatch(head, line_end + 2, end + 2) is not None
    low = head.lower()
    want = ORACLE.findall(low[line_end : end + 2])
    assert find_fields(low, line_end, end, field_finder(NAMES)) == want


def test_values_lose_surrounding_whitespace_only() -> None:
    head = head_of([b"Host: \t a b \t", b"Connection:", b"content-length:5 "])
    end, line_end = head.find(b"\r\n\r\n"), head.find(b"\r\n")
    got = find_fields(head.lower(), line_end, end, field_finder(NAMES))
    assert got == [(b"host", b"a b"), (b"connection", b""), (b"content-length", b"5")]


def test_a_head_without_fields_has_none() -> None:
    head = b"HTTP/1.1 204 No Content\r\n\r\n"
    assert find_fields(head.lower(), 24, 24, field_finder(NAMES)) == []
