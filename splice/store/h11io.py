"""h11 over asyncio streams: one small adapter for both sides of a recorded exchange.

The client side is an ``h11.SERVER`` connection, the upstream side an ``h11.CLIENT``.
Every read waits at most ``timeout`` seconds (TimeoutError), every send drains, so a
slow peer holds back the other instead of growing a buffer; a drain waits at most the
stream's ``timeout`` (TimeoutError), so a peer that stops reading cannot hold the
connection, its task, a replay's pin or a recording's waiters for ever. A request head has a
deadline for the whole of it (``next_head``): a per-read timeout alone would let a
client that sends one byte at a time hold the connection for ever.
"""

from __future__ import annotations

import asyncio
from typing import Any

import h11

#: bytes per read: a few socket buffers' worth, so a large body is few round trips
READ_SIZE = 256 * 1024
#: splice's own limit on a request or response head (see ``config.MAX_HEAD``)
MAX_HEAD = 64 * 1024

Event = h11.Event | type[h11.PAUSED]


class HeadTimeout(Exception):
    """A request head did not come whole within its deadline (the caller answers 408)."""


class HttpStream:
    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        role: type[h11.CLIENT] | type[h11.SERVER],
        timeout: float = 600.0,
    ) -> None:
        self.reader = reader
        self.writer = writer
        #: the longest a send waits for the peer to take its bytes (the idle timeout)
        self.timeout = timeout
        self.conn = h11.Connection(role, max_incomplete_event_size=MAX_HEAD)

    def feed(self, data: bytes) -> None:
        """Bytes already read from the socket by someone else (the engine's first head)."""
        if data:
            self.conn.receive_data(data)

    async def next_event(self, timeout: float) -> Event:
        """The next event; reads as needed, each read bounded by ``timeout``."""
        while True:
            event = self.conn.next_event()
            if event is not h11.NEED_DATA:
                return event  # type: ignore[return-value]
            data = await asyncio.wait_for(self.reader.read(READ_SIZE), timeout)
            self.conn.receive_data(data)

    async def next_head(self, idle: float, head: float, *, first: bool) -> Event:
        """The next event (a request, or the close), the head whole within ``head`` s.

        As in the engine: a connection's ``first`` head has its clock running at once;
        a later one's starts with its first bytes, the silence before them being the
        keep-alive wait, bounded by ``idle`` alone (TimeoutError).

        Raises:
            HeadTimeout: the head started but was not whole in time.
        """
        loop = asyncio.get_running_loop()
        started = first or bool(self.conn.trailing_data[0])  # pipelined bytes are in
        deadline = loop.time() + head if started else None
        while True:
            event = self.conn.next_event()
            if event is not h11.NEED_DATA:
                return event  # type: ignore[return-value]
            if deadline is None:
                data = await asyncio.wait_for(self.reader.read(READ_SIZE), idle)
                deadline = loop.time() + head  # the head's first bytes are here
            else:
                left = deadline - loop.time()
                if left <= 0:
                    raise HeadTimeout
                try:
                    data = await asyncio.wait_for(self.reader.read(READ_SIZE), left)
                except TimeoutError:
                    raise HeadTimeout from None
            self.conn.receive_data(data)

    async def send(self, event: Any) -> None:
        data = self.conn.send(event)
        if data:
            self.writer.write(data)
            await self._drain()

    async def send_all(self, events: list[Any]) -> None:
        """Several events in one write (a whole small response: one send, one packet)."""
        self.writer.write(b"".join(self.conn.send(e) or b"" for e in events))
        await self._drain()

    async def _drain(self) -> None:
        """Wait for the peer to take the bytes, at most ``timeout`` (TimeoutError).

        ``asyncio.timeout``, not ``wait_for``: a drain with room to spare must return
        without yielding to the loop, or a client's ClientHello sent right after our
        ``200 Connection established`` is read as plain data before ``start_tls``."""
        async with asyncio.timeout(self.timeout):
            await self.writer.drain()

    @property
    def can_respond(self) -> bool:
        """A request is in and no response byte is out: an error page can still be sent."""
        return self.conn.our_state in (h11.IDLE, h11.SEND_RESPONSE)

    async def close(self) -> None:
        self.writer.close()
        try:
            await asyncio.wait_for(self.writer.wait_closed(), 1.0)
        except (OSError, TimeoutError):
            pass
