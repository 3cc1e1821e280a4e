"""Chunked framing tracked over forwarded bytes: where the body ends, never a decode."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from splice.errors import ProtocolError
from splice.wire.chunked import MAX_LINE, ChunkedFraming, State

BODY = b"5;ext=1\r\nhello\r\n10\r\n0123456789abcdef\r\n0\r\nTrailer: x\r\n\r\n"


def chunked(parts: list[bytes], trailer: bytes = b"") -> bytes:
    out = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts if p)
    return out + b"0\r\n" + trailer + b"\r\n"


class TestScan:
    def test_the_whole_body_is_taken_and_nothing_after_it(self) -> None:
        c = ChunkedFraming()
        assert c.scan(BODY + b"GET / HTTP/1.1") == len(BODY)
        assert c.state is State.DONE

    def test_a_partial_size_line_is_kept_for_later(self) -> None:
        c = ChunkedFraming()
        assert c.scan(b"5;e") == 0
        assert c.scan(b"5;ext\r\nhel") == 10
        assert (c.state, c.remaining) == (State.DATA, 2)

    def test_the_largest_size_a_signed_64_bit_count_holds_is_taken(self) -> None:
        c = ChunkedFraming()
        assert c.scan(b"7fffffffffffffff\r\n") == 18
        assert c.remaining == (1 << 63) - 1

    def test_spliced_chunk_data_is_accounted_for(self) -> None:
        c = ChunkedFraming()
        assert c.scan(b"100000\r\n") == 8
        c.data_passed(0x100000)
        assert c.state is State.DATA_END
        # one tuple: mypy would keep c.state narrowed to DATA_END across the scan() call
        assert (c.scan(b"\r\n0\r\n\r\n"), c.state) == (7, State.DONE)

    @pytest.mark.parametrize(
        "data",
        [b"zz\r\n", b"\r\n", b"5\r\nhelloX\r\n", b"0\r\nbad trailer\r\n\r\n",
         b"11111111111111111\r\n", b"8000000000000000\r\n", b"FFFFFFFFFFFFFFFF\r\n"],
        ids=["not-hex", "empty-size", "data-too-long", "bad-trailer", "size-overflow",
             "size-past-ssize_t", "size-2**64-1"],
    )  # fmt: skip
    def test_malformed_framing_is_a_protocol_error(self, data: bytes) -> None:
        with pytest.raises(ProtocolError):
            ChunkedFraming().scan(data)

    @pytest.mark.parametrize(
        "data",
        [b"5\n", b"5\nhello\n0\n\n", b"5\r\nhello\n", b"0\r\nX-T: 1\n"],
        ids=["size-line", "whole-body", "data-end", "trailer"],
    )
    def test_a_bare_lf_is_refused_at_once_not_waited_on(self, data: bytes) -> None:
        """No CRLF will ever come to end such a line: waiting would hold the client
        until the idle timeout."""
        with pytest.raises(ProtocolError, match="bare LF"):
            ChunkedFraming().scan(data)

    def test_a_crlf_split_between_reads_is_waited_for(self) -> None:
        c = ChunkedFraming()
        assert c.scan(b"5\r") == 0
        assert c.scan(b"5\r\nhello\r") == 8
        assert (c.state, c.remaining) == (State.DATA_END, 0)

    def test_an_endless_size_line_is_refused(self) -> None:
        with pytest.raises(ProtocolError):
            ChunkedFraming().scan(b"5" + b";" * (MAX_LINE + 10))


class TestLaws:
    @settings(max_examples=200, deadline=None)
    @given(st.lists(st.binary(max_size=40), max_size=6), st.lists(st.integers(1, 17), max_size=30))
    def test_any_split_finds_the_same_end(self, parts: list[bytes], cuts: list[int]) -> None:
        body = chunked(parts, b"X-T: 1\r\n")
        data = body + b"NEXT"
        c, pending, taken, pos = ChunkedFraming(), b"", 0, 0
        for size in [*cuts, len(data)]:
            pending += data[pos : pos + size]
            pos += size
            n = c.scan(pending)
            taken += n
            pending = pending[n:]
            if c.state is State.DONE:
                break
        assert c.state is State.DONE and taken == len(body)

    @settings(max_examples=300, deadline=None)
    @given(st.binary(max_size=200))
    def test_any_bytes_scan_or_raise_the_protocol_error(self, data: bytes) -> None:
        try:
            n = ChunkedFraming().scan(data)
        except ProtocolError:
            return
        assert 0 <= n <= len(data)
