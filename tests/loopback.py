"""A flow between real loopback TCP sockets, for the tests of ``Flow`` and the C
fast path: writer -> src ==Flow==> dst -> reader."""

from __future__ import annotations

import socket
import struct

from splice.io.flow import Flow
from splice.io.pipes import PipePool

#: SO_LINGER on, 0 s: close() sends RST
RST = struct.pack("ii", 1, 0)


def pair(rcvbuf: int = 0) -> tuple[socket.socket, socket.socket]:
    """A connected pair; ``rcvbuf`` sets the accepted side's receive buffer."""
    with socket.create_server(("127.0.0.1", 0)) as ls:
        if rcvbuf:
            ls.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        a = socket.create_connection(ls.getsockname())
        b, _ = ls.accept()
    for s in (a, b):
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return a, b


class Rig:
    """writer -> src ==Flow==> dst -> reader; ``small_dst``: 4 KiB buffers on dst's way,
    so dst refuses bytes soon."""

    def __init__(self, small_dst: bool = False) -> None:
        self.writer, self.src = pair()
        self.dst, self.reader = pair(rcvbuf=4096 if small_dst else 0)
        if small_dst:
            self.dst.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        self.src.setblocking(False)
        self.dst.setblocking(False)
        self.pool = PipePool(4)
        self.armed: list[int] = []
        self.flow = Flow(self.src, self.dst, self.pool, self.armed.append)

    def read(self, n: int) -> bytes:
        """``n`` bytes from the reader, or fewer at its EOF."""
        self.reader.settimeout(5.0)
        got = bytearray()
        while len(got) < n:
            chunk = self.reader.recv(n - len(got))
            if not chunk:
                break
            got += chunk
        return bytes(got)

    def close(self) -> None:
        self.flow.close()
        self.pool.close()
        for s in (self.writer, self.src, self.dst, self.reader):
            s.close()
