"""The least a Python relay can do per connection: the floor splice is compared to.

No routing, no parsing, no timers, no metrics, no asyncio: one epoll loop,
edge-triggered, that accepts, dials one fixed upstream, and copies bytes both ways
through one shared buffer, passing each FIN on with ``shutdown(SHUT_WR)``. What it
costs per connection is what the interpreter alone costs for the same events, so
a target that a relay this bare cannot reach is out of reach for any Python
per-event relay (bench README, "Profiling a target"). Not a product: no limits,
no timeouts, loopback only.

    python -m bench.floor_relay --listen 18446 --to 18443
"""

from __future__ import annotations

import argparse
import select
import signal
import socket

_IN = select.EPOLLIN | select.EPOLLRDHUP | select.EPOLLET
_ALL = _IN | select.EPOLLOUT
_HANGUPS = select.EPOLLRDHUP | select.EPOLLHUP | select.EPOLLERR
_CHUNK = 64 * 1024
_BUF = bytearray(_CHUNK)
_MV = memoryview(_BUF)


class Pair:
    """A client socket and its upstream; ``pending[i]`` waits to be written to ``socks[i]``."""

    __slots__ = ("connecting", "done", "fds", "pending", "socks")

    def __init__(self, client: socket.socket, up: socket.socket) -> None:
        self.socks = (client, up)
        self.fds = (client.fileno(), up.fileno())
        self.pending: list[bytes] = [b"", b""]
        #: FIN seen from socks[i]
        self.done = [False, False]
        self.connecting = True


class Relay:
    def __init__(self, listen: int, to: int) -> None:
        self.to = ("127.0.0.1", to)
        self.ls = socket.create_server(("127.0.0.1", listen), backlog=4096)
        self.ls.setblocking(False)
        self.ep = select.epoll()
        self.ep.register(self.ls.fileno(), _IN)
        self.pairs: dict[int, Pair] = {}

    def run(self) -> None:
        lfd = self.ls.fileno()
        pairs = self.pairs
        while True:
            for fd, ev in self.ep.poll():
                if fd == lfd:
                    self.accept()
                    continue
                p = pairs.get(fd)
                if p is None:
                    continue
                try:
                    self.event(p, 0 if fd == p.fds[0] else 1, ev)
                except OSError:
                    self.close(p)

    def accept(self) -> None:
        while True:
            try:
                c, _ = self.ls.accept()
            except BlockingIOError:
                return
            c.setblocking(False)
            c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            u = socket.socket()
            u.setblocking(False)
            u.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            try:
                u.connect(self.to)
            except BlockingIOError:
                pass
            p = Pair(c, u)
            self.pairs[p.fds[0]] = self.pairs[p.fds[1]] = p
            self.ep.register(p.fds[0], _IN)
            self.ep.register(p.fds[1], _ALL)

    def event(self, p: Pair, i: int, ev: int) -> None:
        j = 1 - i
        if i == 1 and p.connecting:
            p.connecting = False
            if ev & _HANGUPS and p.socks[1].getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                self.close(p)
                return
            self.pump(p, 0)  # what the client sent while the connect was in flight
        if ev & select.EPOLLOUT and p.pending[i]:
            self.flush(p, i)
            if not p.pending[i]:
                self.pump(p, j)  # reading j stopped while i was full
        if ev & ~select.EPOLLOUT and not p.connecting:
            self.pump(p, i)

    def pump(self, p: Pair, i: int) -> None:
        """Copy from socks[i] to the other until i is drained or the other is full."""
        j = 1 - i
        if p.pending[j] or p.done[i]:
            return
        src, dst = p.socks[i], p.socks[j]
        while True:
            try:
                n = src.recv_into(_BUF)
            except BlockingIOError:
                return
            if n == 0:
                p.done[i] = True
                if p.done[j]:
                    self.close(p)
                else:
                    dst.shutdown(socket.SHUT_WR)
                return
            try:
                sent = dst.send(_MV[:n])
            except BlockingIOError:
                sent = 0
            if sent < n:
                p.pending[j] = bytes(_MV[sent:n])
                return

    def flush(self, p: Pair, j: int) -> None:
        try:
            sent = p.socks[j].send(p.pending[j])
        except BlockingIOError:
            return
        p.pending[j] = p.pending[j][sent:]

    def close(self, p: Pair) -> None:
        for fd, s in zip(p.fds, p.socks, strict=True):
            self.pairs.pop(fd, None)
            s.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--listen", type=int, required=True, help="loopback port to accept on")
    ap.add_argument("--to", type=int, required=True, help="loopback port to relay to")
    a = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: exit(0))
    Relay(a.listen, a.to).run()


if __name__ == "__main__":
    main()
