"""A bounds-checked read cursor over bytes, shared by the TLS and PROXY parsers.

A read that would run past the end raises ``Short`` and leaves the position where
it was, so nothing half-read is ever committed. Each parser decides what "short"
means at its layer: need more bytes (return ``None``) or a length field that lies
(``ProtocolError``). ``Short`` never leaves ``splice.wire``.
"""

from __future__ import annotations


class Short(Exception):
    """A read ran past the end of the data."""


class Cursor:
    """Reads big-endian integers and slices from the front of ``data``."""

    __slots__ = ("_data", "_pos")

    def __init__(self, data: bytes | memoryview) -> None:
        self._data = memoryview(data)
        self._pos = 0

    @property
    def remaining(self) -> int:
        return len(self._data) - self._pos

    def take(self, n: int) -> memoryview:
        """The next ``n`` bytes, without copying."""
        end = self._pos + n
        if n < 0 or end > len(self._data):
            raise Short
        view = self._data[self._pos : end]
        self._pos = end
        return view

    def u8(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        return int.from_bytes(self.take(2), "big")

    def u24(self) -> int:
        return int.from_bytes(self.take(3), "big")
