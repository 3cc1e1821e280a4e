"""The C head scanners (``_head_scan.c``) against their twins, the regex passes
(``scan_strict`` of ``http_head`` and ``http_response``): on every input each pair
returns the same answer, to the byte.

Heads come from a grammar that reaches every branch of the scanners (wanted names in
any case, OWS on both sides, obs-text, empty values, reasons or none), then get mutated
with the bytes the grammar is about (CR, LF, HTAB, SP, colon, DEL, NUL, obs-text,
digits) so that the refusals are reached too; plus plain random bytes, and every
``max_head`` around the head's end.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from types import ModuleType
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from splice.wire import http_head, http_response

REQUEST_NAMES = http_head._NAMES
RESPONSE_NAMES = http_response._FRAMING_NAMES
_OTHER = ["user-agent", "cookie", "x-a", "hostx", "accept-language", "x-forwarded-fort"]


def _names(wanted: tuple[bytes, ...]) -> st.SearchStrategy[bytes]:
    return st.sampled_from([n.decode() for n in wanted] + _OTHER).flatmap(
        lambda n: st.lists(st.booleans(), min_size=len(n), max_size=len(n)).map(
            lambda up: "".join(c.upper() if u else c for c, u in zip(n, up, strict=True)).encode()
        )
    )


_OWS = st.sampled_from([b"", b" ", b"\t", b"  ", b" \t "])
_VALUE = st.binary(max_size=24).map(
    lambda b: bytes(c for c in b if c == 9 or 0x20 <= c <= 0x7E or c >= 0x80)
)
_METHOD = st.sampled_from([b"GET", b"get", b"POST", b"M-SEARCH", b"X!#$%&'*+.^_`|~9"])
_TARGET = st.sampled_from([b"/", b"/a/b?c=d", b"*", b"http://a.test:80/x", b"~!\x7e", b"/%20"])
_MINOR = st.sampled_from([b"0", b"1"])
_STATUS = st.sampled_from([b"100", b"101", b"200", b"204", b"304", b"404", b"599", b"199"])
_REASON = st.sampled_from([b"", b" ", b" OK", b" Not Found", b" \tx\x80\xff", b" a  b "])


def _fields(draw: st.DrawFn, names: tuple[bytes, ...]) -> list[bytes]:
    return [
        draw(_names(names)) + b":" + draw(_OWS) + draw(_VALUE) + draw(_OWS)
        for _ in range(draw(st.integers(0, 6)))
    ]


@st.composite
def requests(draw: st.DrawFn) -> bytes:
    lines = [b"%s %s HTTP/1.%s" % (draw(_METHOD), draw(_TARGET), draw(_MINOR))]
    lines += _fields(draw, REQUEST_NAMES)
    return b"\r\n".join(lines) + b"\r\n\r\n" + draw(st.binary(max_size=8))


@st.composite
def responses(draw: st.DrawFn) -> bytes:
    lines = [b"HTTP/1.%s %s%s" % (draw(_MINOR), draw(_STATUS), draw(_REASON))]
    lines += _fields(draw, RESPONSE_NAMES)
    return b"\r\n".join(lines) + b"\r\n\r\n" + draw(st.binary(max_size=8))


_NOISE = st.sampled_from(list(b"\r\n\t :\x00\x7f\x80\xffAz/069"))


def mutated(heads: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    @st.composite
    def mutate(draw: st.DrawFn) -> bytes:
        data = bytearray(draw(heads))
        for _ in range(draw(st.integers(1, 3))):
            at = draw(st.integers(0, len(data)))
            how = draw(st.sampled_from(["insert", "replace", "delete"]))
            if how == "insert":
                data[at:at] = bytes([draw(_NOISE)])
            elif at < len(data):
                if how == "replace":
                    data[at] = draw(_NOISE)
                else:
                    del data[at]
        return bytes(data)

    return mutate()


Twin = Callable[[bytes | bytearray, int, tuple[bytes, ...]], Any]
#: the C scanners take any bytes-like object (TestArguments)
Scanner = Callable[[bytes | bytearray | memoryview, int, tuple[bytes, ...]], Any]


class Pair:
    """A C scanner, its regex twin and the names they are called with."""

    def __init__(self, c: Scanner, twin: Twin, names: tuple[bytes, ...]) -> None:
        self.c, self.twin, self.names = c, twin, names

    def agree(self, data: bytes, max_head: int = http_head.MAX_HEAD) -> None:
        want = self.twin(data, max_head, self.names)
        assert self.c(data, max_head, self.names) == want
        assert self.c(bytearray(data), max_head, self.names) == want


@pytest.fixture(scope="module")
def req(c_heads: ModuleType) -> Pair:
    return Pair(c_heads.scan_request, http_head.scan_strict, REQUEST_NAMES)


@pytest.fixture(scope="module")
def resp(c_heads: ModuleType) -> Pair:
    return Pair(c_heads.scan_response, http_response.scan_strict, RESPONSE_NAMES)


class TestRequestTwins:
    @settings(max_examples=600, deadline=None)
    @given(requests())
    @example(b"GET / HTTP/1.1\r\n\r\n")
    @example(b"GET / HTTP/1.1\r\nHost:\r\nHOST: \t A.b \t\r\nAccept:\xff\x80 \r\n\r\n")
    def test_on_heads_of_the_grammar(self, req: Pair, data: bytes) -> None:
        req.agree(data)

    @settings(max_examples=1500, deadline=None)
    @given(mutated(requests()))
    @example(b"GET / HTTP/1.1\r\nHost: a\r\nX\r\n\r\n")  # a field line without a colon
    @example(b"GET / HTTP/1.1\r\n: a\r\n\r\n")  # an empty name
    @example(b"GET / HTTP/1.1\r\nHost: a\rb\r\n\r\n")  # CR in a value
    @example(b"GET / HTTP/1.1\r\nHost: a\x7f\r\n\r\n")  # DEL in a value
    @example(b"GET  / HTTP/1.1\r\n\r\n")  # an empty target
    @example(b" / HTTP/1.1\r\n\r\n")  # an empty method
    @example(b"GET / HTTP/1.2\r\n\r\n")
    @example(b"GET / HTTP/1.1\n\r\n\r\n")
    @example(b"GET /\r\n\r\n")
    def test_on_mutated_heads(self, req: Pair, data: bytes) -> None:
        req.agree(data)

    @settings(max_examples=500, deadline=None)
    @given(st.binary(max_size=200))
    def test_on_any_bytes(self, req: Pair, data: bytes) -> None:
        req.agree(data, 128)

    @settings(max_examples=300, deadline=None)
    @given(requests(), st.integers(-2, 8))
    @example(b"GET / HTTP/1.1\r\n\r\n", -100)  # a negative max_head: nothing fits
    def test_at_every_max_head_around_the_end(self, req: Pair, data: bytes, off: int) -> None:
        """The blank line must end within ``max_head``: at the edge, one byte either way."""
        req.agree(data, data.find(b"\r\n\r\n") + 4 + off)

    def test_a_name_longer_than_any_wanted_one_is_passed_over(self, req: Pair) -> None:
        data = b"GET / HTTP/1.1\r\n" + b"h" * 100 + b": 1\r\nHost: a\r\n\r\n"
        req.agree(data)
        got = req.c(data, 1024, REQUEST_NAMES)
        assert got is not None and got[3] == [(b"host", b"a")]

    def test_a_wanted_name_of_any_length_is_matched_in_any_case(self, req: Pair) -> None:
        name = b"x-" + b"long" * 30
        got = req.c(b"GET / HTTP/1.1\r\n" + name.upper() + b": V\r\n\r\n", 1024, (name,))
        assert got is not None and got[3] == [(name, b"v")]

    def test_the_names_returned_are_the_callers_objects(self, req: Pair) -> None:
        got = req.c(b"GET / HTTP/1.1\r\nHOST: a\r\n\r\n", 1024, REQUEST_NAMES)
        assert got is not None and got[3][0][0] is REQUEST_NAMES[0]


class TestResponseTwins:
    @settings(max_examples=600, deadline=None)
    @given(responses())
    @example(b"HTTP/1.1 200\r\n\r\n")
    @example(b"HTTP/1.0 204 \r\nConnection: \tClose \r\nContent-Length:\r\n\r\n")
    def test_on_heads_of_the_grammar(self, resp: Pair, data: bytes) -> None:
        resp.agree(data)

    @settings(max_examples=1500, deadline=None)
    @given(mutated(responses()))
    @example(b"HTTP/1.1 600 No\r\n\r\n")  # a first digit past 5
    @example(b"HTTP/1.1 099 No\r\n\r\n")
    @example(b"HTTP/1.1 20x No\r\n\r\n")
    @example(b"HTTP/1.1 2000\r\n\r\n")  # a fourth digit, no SP
    @example(b"HTTP/1.1  200\r\n\r\n")
    @example(b"HTTP/1.1 200 O\rK\r\n\r\n")  # CR in the reason
    @example(b"HTTP/1.2 200 OK\r\n\r\n")
    @example(b"HTTP/1.1 200 OK\r\nX\r\n\r\n")
    @example(b"http/1.1 200 OK\r\n\r\n")
    def test_on_mutated_heads(self, resp: Pair, data: bytes) -> None:
        resp.agree(data)

    @settings(max_examples=500, deadline=None)
    @given(st.binary(max_size=200))
    def test_on_any_bytes(self, resp: Pair, data: bytes) -> None:
        resp.agree(b"HTTP/1.1 2" + data, 128)

    @settings(max_examples=300, deadline=None)
    @given(responses(), st.integers(-2, 8))
    @example(b"HTTP/1.1 200 OK\r\n\r\nbody", -100)  # a negative max_head: nothing fits
    def test_at_every_max_head_around_the_end(self, resp: Pair, data: bytes, off: int) -> None:
        resp.agree(data, data.find(b"\r\n\r\n") + 4 + off)

    def test_the_status_is_an_int(self, resp: Pair) -> None:
        got = resp.c(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n", 1024, RESPONSE_NAMES)
        assert got is not None and got[:3] == (b"1", 404, [(b"content-length", b"0")])


@pytest.mark.parametrize("byte", [0x00, 0x09, 0x0A, 0x0D, 0x1F, 0x20, 0x3A, 0x7E, 0x7F, 0x80, 0xFF])
def test_each_kind_of_byte_at_each_place_of_a_value(req: Pair, resp: Pair, byte: int) -> None:
    """The value scan strides 8 bytes at a time and leaves a word with a refused byte, or
    HTAB, to the byte loop: whatever the byte's place in the word, both agree."""
    for n in range(1, 27):
        for at in range(n):
            value = bytearray(b"v" * n)
            value[at] = byte
            req.agree(b"GET / HTTP/1.1\r\nHost: " + value + b"\r\nX: y\r\n\r\n")
            resp.agree(b"HTTP/1.1 200 " + value + b"\r\nConnection: " + value + b"\r\n\r\n")


class TestArguments:
    def test_any_bytes_like_object_is_read(self, req: Pair) -> None:
        data = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"
        assert req.c(memoryview(data), 1024, REQUEST_NAMES) == req.twin(data, 1024, REQUEST_NAMES)

    @pytest.mark.parametrize("fn", ["scan_request", "scan_response"])
    @pytest.mark.parametrize(
        ("args", "message"),
        [
            (("GET / HTTP/1.1\r\n\r\n", 1024, REQUEST_NAMES), "bytes-like"),
            ((b"", 1024, list(REQUEST_NAMES)), "tuple of names"),
            ((b"", 1024, ("host",)), "names as bytes"),
            ((b"", "1024", REQUEST_NAMES), "integer"),
            ((b"", 1024), "3 arguments"),
        ],
    )
    def test_wrong_arguments_raise_type_error(
        self, c_heads: ModuleType, fn: str, args: tuple[object, ...], message: str
    ) -> None:
        with pytest.raises(TypeError, match=message):
            getattr(c_heads, fn)(*args)

    def test_a_bytearray_is_locked_while_scanned_and_free_after(self, req: Pair) -> None:
        buf = bytearray(b"GET / HTTP/1.1\r\n\r\n")
        assert req.c(buf, 1024, REQUEST_NAMES) is not None
        buf += b"more"  # the buffer export was released: resizing works
        assert buf.endswith(b"more")


def test_the_compiled_build_parses_with_the_c_scanners() -> None:
    """What the bench measures: the compiled build has the C scanners in place."""
    from splice.build import build

    compiled = build() == "mypyc"
    assert (http_head.SCAN is not None) == compiled
    assert (http_response.SCAN is not None) == compiled


def test_the_parsers_take_the_c_scanners_when_the_extension_is_there(
    c_heads: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "splice.wire._head_scan", c_heads)
    assert http_head._c_scanner() is c_heads.scan_request
    assert http_response._c_scanner() is c_heads.scan_response
