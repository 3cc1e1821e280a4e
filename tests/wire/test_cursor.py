from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from splice.wire.cursor import Cursor, Short


class TestCursor:
    def test_integers_are_read_big_endian_in_order(self) -> None:
        c = Cursor(b"\x01\x02\x03\x04\x05\x06\x07\x08")
        assert (c.u8(), c.u16(), c.u24()) == (0x01, 0x0203, 0x040506)
        assert c.remaining == 2

    def test_take_returns_the_next_bytes_and_advances(self) -> None:
        c = Cursor(memoryview(b"abcdef"))
        assert bytes(c.take(2)) == b"ab"
        assert bytes(c.take(0)) == b""
        assert bytes(c.take(4)) == b"cdef"
        assert c.remaining == 0

    @pytest.mark.parametrize("read", ["u8", "u16", "u24"])
    def test_a_short_integer_read_raises_and_does_not_move(self, read: str) -> None:
        c = Cursor(b"\x01")
        c.u8()
        with pytest.raises(Short):
            getattr(c, read)()
        assert c.remaining == 0

    def test_a_short_take_raises_and_does_not_move(self) -> None:
        c = Cursor(b"abc")
        with pytest.raises(Short):
            c.take(4)
        assert bytes(c.take(3)) == b"abc"

    def test_a_negative_take_is_short(self) -> None:
        c = Cursor(b"abc")
        with pytest.raises(Short):
            c.take(-1)
        assert c.remaining == 3

    @settings(max_examples=100, deadline=None)
    @given(data=st.binary(max_size=64), sizes=st.lists(st.integers(0, 70), max_size=10))
    def test_takes_concatenate_to_a_prefix_of_the_data(self, data: bytes, sizes: list[int]) -> None:
        c = Cursor(data)
        taken = b""
        for n in sizes:
            try:
                taken += bytes(c.take(n))
            except Short:
                assert n > len(data) - len(taken)
        assert data.startswith(taken)
        assert c.remaining == len(data) - len(taken)
