"""The C request-head scanner (``_head_scan.c``) against its twin, the two regex passes
(``http_head.scan_strict``): on every input both return the same answer, to the byte.

Heads come from a grammar that reaches every branch of the scanner (wanted names in
any case, OWS on both sides, obs-text, empty values), then get mutated with the bytes
the grammar is about (CR, LF, HTAB, SP, colon, DEL, NUL, obs-text) so that the refusals
are reached too; plus plain random bytes, and every ``max_head`` around the head's end.
"""

from __future__ import annotations

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from splice.wire import http_head
from splice.wire.http_head import _NAMES, Scanner, scan_strict

_WANTED = [n.decode() for n in _NAMES]
_OTHER = ["user-agent", "cookie", "x-a", "hostx", "accept-language", "x-forwarded-fort"]
_NAME = st.sampled_from(_WANTED + _OTHER).flatmap(
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


@st.composite
def heads(draw: st.DrawFn) -> bytes:
    minor = draw(st.sampled_from([b"0", b"1"]))
    lines = [b"%s %s HTTP/1.%s" % (draw(_METHOD), draw(_TARGET), minor)]
    for _ in range(draw(st.integers(0, 6))):
        lines.append(draw(_NAME) + b":" + draw(_OWS) + draw(_VALUE) + draw(_OWS))
    return b"\r\n".join(lines) + b"\r\n\r\n" + draw(st.binary(max_size=8))


_NOISE = st.sampled_from(list(b"\r\n\t :\x00\x7f\x80\xffAz/"))


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(heads()))
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


def agree(scan: Scanner, data: bytes, max_head: int = http_head.MAX_HEAD) -> None:
    want = scan_strict(data, max_head, _NAMES)
    assert scan(data, max_head, _NAMES) == want
    assert scan(bytearray(data), max_head, _NAMES) == want


class TestTwins:
    @settings(max_examples=600, deadline=None)
    @given(heads())
    @example(b"GET / HTTP/1.1\r\n\r\n")
    @example(b"GET / HTTP/1.1\r\nHost:\r\nHOST: \t A.b \t\r\nAccept:\xff\x80 \r\n\r\n")
    def test_on_heads_of_the_grammar(self, c_scan: Scanner, data: bytes) -> None:
        agree(c_scan, data)

    @settings(max_examples=1500, deadline=None)
    @given(mutated())
    @example(b"GET / HTTP/1.1\r\nHost: a\r\nX\r\n\r\n")  # a field line without a colon
    @example(b"GET / HTTP/1.1\r\n: a\r\n\r\n")  # an empty name
    @example(b"GET / HTTP/1.1\r\nHost: a\rb\r\n\r\n")  # CR in a value
    @example(b"GET / HTTP/1.1\r\nHost: a\x7f\r\n\r\n")  # DEL in a value
    @example(b"GET  / HTTP/1.1\r\n\r\n")  # an empty target
    @example(b" / HTTP/1.1\r\n\r\n")  # an empty method
    @example(b"GET / HTTP/1.2\r\n\r\n")
    @example(b"GET / HTTP/1.1\n\r\n\r\n")
    @example(b"GET /\r\n\r\n")
    def test_on_mutated_heads(self, c_scan: Scanner, data: bytes) -> None:
        agree(c_scan, data)

    @settings(max_examples=500, deadline=None)
    @given(st.binary(max_size=200))
    def test_on_any_bytes(self, c_scan: Scanner, data: bytes) -> None:
        agree(c_scan, data, 128)

    @settings(max_examples=300, deadline=None)
    @given(heads(), st.integers(-2, 8))
    def test_at_every_max_head_around_the_end(self, c_scan: Scanner, data: bytes, off: int) -> None:
        """The blank line must end within ``max_head``: at the edge, one byte either way."""
        agree(c_scan, data, data.find(b"\r\n\r\n") + 4 + off)

    def test_a_name_longer_than_any_wanted_one_is_passed_over(self, c_scan: Scanner) -> None:
        data = b"GET / HTTP/1.1\r\n" + b"h" * 100 + b": 1\r\nHost: a\r\n\r\n"
        agree(c_scan, data)
        got = c_scan(data, 1024, _NAMES)
        assert got is not None and got[3] == [(b"host", b"a")]

    def test_the_names_returned_are_the_callers_objects(self, c_scan: Scanner) -> None:
        got = c_scan(b"GET / HTTP/1.1\r\nHOST: a\r\n\r\n", 1024, _NAMES)
        assert got is not None and got[3][0][0] is _NAMES[0]


class TestArguments:
    def test_any_bytes_like_object_is_read(self, c_scan: Scanner) -> None:
        data = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"
        assert c_scan(memoryview(data), 1024, _NAMES) == scan_strict(data, 1024, _NAMES)  # type: ignore[arg-type]

    @pytest.mark.parametrize(
        ("args", "message"),
        [
            (("GET / HTTP/1.1\r\n\r\n", 1024, _NAMES), "bytes-like"),
            ((b"", 1024, list(_NAMES)), "tuple of names"),
            ((b"", 1024, ("host",)), "names as bytes"),
            ((b"", "1024", _NAMES), "integer"),
        ],
    )
    def test_wrong_types_raise_type_error(
        self, c_scan: Scanner, args: tuple[object, ...], message: str
    ) -> None:
        with pytest.raises(TypeError, match=message):
            c_scan(*args)  # type: ignore[arg-type]

    def test_the_argument_count_is_checked(self, c_scan: Scanner) -> None:
        with pytest.raises(TypeError, match="3 arguments"):
            c_scan(b"", 1024)  # type: ignore[call-arg]

    def test_a_bytearray_is_locked_while_scanned_and_free_after(self, c_scan: Scanner) -> None:
        buf = bytearray(b"GET / HTTP/1.1\r\n\r\n")
        assert c_scan(buf, 1024, _NAMES) is not None
        buf += b"more"  # the buffer export was released: resizing works
        assert buf.endswith(b"more")


def test_the_compiled_build_parses_with_the_c_scanner() -> None:
    """What the bench measures: the compiled build has the C scanner in place."""
    from splice.build import build

    assert (http_head.SCAN is not None) == (build() == "mypyc")
