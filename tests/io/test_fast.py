"""The C fast path of tunnel events (``splice/io/_copy.c``: ``poll``, ``tunnel``,
``untunnel``, ``taken``), and ``Flow``'s side of it, on real loopback TCP sockets and a
real epoll. The interpreted run builds the C module itself (conftest.py).
"""

from __future__ import annotations

import errno
import os
import select
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import loopback
import pytest

from splice.io import flow as flow_mod
from splice.io import native
from splice.io.flow import BLOCKED, CHUNK, DRAINED, EOF
from splice.io.native import FastPath
from splice.io.reactor import EDGE_IN


class Tunnel(loopback.Rig):
    """writer -> src ==fast path==> dst -> reader, src registered in a real epoll."""

    def __init__(self, fast: FastPath, small_dst: bool = False) -> None:
        super().__init__(small_dst)
        self.fast = fast
        self.ep = select.epoll()
        self.ep.register(self.src.fileno(), EDGE_IN)

    def poll(self, timeout_ms: int = 2000) -> tuple[int, list[tuple[int, int]]]:
        return self.fast.poll(self.ep.fileno(), 64, timeout_ms)

    def close(self) -> None:
        self.fast.untunnel(self.src.fileno(), True)
        self.ep.close()
        super().close()


@pytest.fixture
def fast(c_fast: FastPath, monkeypatch: pytest.MonkeyPatch) -> FastPath:
    """The C fast path, also as ``Flow``'s (on the interpreted run it has none)."""
    if native.FAST is None:
        monkeypatch.setattr(flow_mod, "_tunnel", c_fast.tunnel)
        monkeypatch.setattr(flow_mod, "_untunnel", c_fast.untunnel)
        monkeypatch.setattr(flow_mod, "_taken", c_fast.taken)
    return c_fast


@pytest.fixture
def tunnel(fast: FastPath, c_module: Any) -> Iterator[Any]:
    made: list[Tunnel] = []

    def make(**kw: Any) -> Tunnel:
        t = Tunnel(fast, **kw)
        t.flow.copy = c_module.copy  # fast_on wants the C loop
        made.append(t)
        return t

    yield make
    for t in made:
        t.close()


# -- poll, tunnel, untunnel, taken ----------------------------------------------------------


def test_a_plain_read_event_is_moved_in_c_and_not_handed_up(tunnel: Any) -> None:
    t = tunnel()
    t.fast.tunnel(t.src.fileno(), t.dst.fileno())
    for i in range(20):
        msg = b"%04d" % i * 100
        t.writer.sendall(msg)
        assert t.poll() == (1, [])
        assert t.read(len(msg)) == msg
    assert t.fast.taken(t.src.fileno()) == 20 * 400
    assert t.fast.taken(t.src.fileno()) == 0  # taken counts once
    assert t.fast.untunnel(t.src.fileno(), False) is None  # it runs on, and left nothing
    assert t.fast.untunnel(t.src.fileno(), True) == (0, None, 0)
    assert t.fast.untunnel(t.src.fileno(), False) == (0, None, 0)  # no route now


def test_a_socket_without_a_route_is_handed_up_untouched(tunnel: Any) -> None:
    t = tunnel()
    t.writer.sendall(b"for python")
    assert t.poll() == (1, [(t.src.fileno(), select.EPOLLIN)])
    assert t.src.recv(100) == b"for python"
    assert t.fast.untunnel(t.src.fileno(), True) == (0, None, 0)
    assert t.fast.taken(t.src.fileno()) == 0


def test_an_event_with_a_hang_up_is_handed_up_unread(tunnel: Any) -> None:
    t = tunnel()
    t.fast.tunnel(t.src.fileno(), t.dst.fileno())
    t.writer.sendall(b"last words")
    t.writer.shutdown(socket.SHUT_WR)
    time.sleep(0.05)  # bytes and FIN in one edge
    n, left = t.poll()
    assert n == 1 and left[0][0] == t.src.fileno() and left[0][1] & select.EPOLLRDHUP
    assert t.src.recv(100) == b"last words"  # Python reads them, in order
    assert t.fast.untunnel(t.src.fileno(), False) is None  # nothing left behind: it runs on


def test_a_full_buffer_is_handed_up_and_the_route_runs_on(tunnel: Any) -> None:
    """Python takes the event (its flow switches to splice); C left nothing behind."""
    t = tunnel()
    t.fast.tunnel(t.src.fileno(), t.dst.fileno())
    t.writer.sendall(b"x" * CHUNK)
    deadline = time.monotonic() + 5
    while len(t.src.recv(CHUNK, socket.MSG_PEEK)) < CHUNK and time.monotonic() < deadline:
        time.sleep(0.001)
    assert t.poll() == (1, [(t.src.fileno(), select.EPOLLIN)])
    assert t.read(CHUNK) == b"x" * CHUNK  # what it read went on
    t.writer.sendall(b"later")
    assert t.poll() == (1, [])
    assert t.read(5) == b"later"
    assert t.fast.untunnel(t.src.fileno(), True) == (CHUNK + 5, None, 0)


def test_writability_is_skipped_unless_the_flow_back_may_wait_for_it(tunnel: Any) -> None:
    """An armed socket reports writability on every ACK: C skips it while the flow
    writing that socket is on the fast path too (it waits for nothing then)."""
    t = tunnel()
    src, dst = t.src.fileno(), t.dst.fileno()
    t.ep.modify(src, EDGE_IN | select.EPOLLOUT)  # armed, as an upstream is for its connect
    t.fast.tunnel(src, dst)
    assert t.poll(100) == (1, [(src, select.EPOLLOUT)])  # no route back: Python's
    t.fast.tunnel(dst, src)
    t.ep.modify(src, EDGE_IN | select.EPOLLOUT)  # writable again: a new edge
    assert t.poll(100) == (1, [])
    t.writer.sendall(b"ping")
    assert t.poll() == (1, [])  # readable and writable: moved in C
    assert t.read(4) == b"ping"
    t.fast.untunnel(dst, True)


def test_a_full_dst_hands_up_and_keeps_the_refused_bytes_for_the_flow(tunnel: Any) -> None:
    t = tunnel(small_dst=True)
    t.fast.tunnel(t.src.fileno(), t.dst.fileno())
    data = os.urandom(1 << 20)
    t.writer.setblocking(False)
    sent = 0
    left: list[tuple[int, int]] = []
    deadline = time.monotonic() + 10
    while not left and time.monotonic() < deadline:
        try:
            sent += t.writer.send(data[sent : sent + 8192])
        except BlockingIOError:
            pass
        _, left = t.poll(100)
    assert left == [(t.src.fileno(), select.EPOLLIN)]
    t.writer.sendall(b"more")
    assert t.poll(100) == (1, [(t.src.fileno(), select.EPOLLIN)])  # stopped: no more moves
    got = t.fast.untunnel(t.src.fileno(), False)  # a stopped route ends without force
    assert got is not None
    nread, tail, err = got
    assert err == 0 and isinstance(tail, bytearray) and tail
    delivered = t.read(nread - len(tail))
    assert delivered + tail == data[:nread]  # in order, nothing lost or doubled


def test_a_reset_dst_hands_up_and_keeps_the_error_for_the_flow(tunnel: Any) -> None:
    t = tunnel()
    t.fast.tunnel(t.src.fileno(), t.dst.fileno())
    t.reader.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, loopback.RST)
    t.reader.close()
    time.sleep(0.05)
    left: list[tuple[int, int]] = []
    for _ in range(3):  # the first send may still be accepted before the RST lands
        t.writer.sendall(b"into the void")
        _, left = t.poll()
        if left:
            break
    assert left == [(t.src.fileno(), select.EPOLLIN)]
    got = t.fast.untunnel(t.src.fileno(), False)
    assert got is not None
    nread, tail, err = got
    assert err in (errno.EPIPE, errno.ECONNRESET) and tail is None and nread > 0


def test_the_functions_reject_bad_arguments(fast: FastPath) -> None:
    bad: Any = fast
    calls: tuple[Callable[[], object], ...] = (
        lambda: bad.poll(1, 2),
        lambda: bad.tunnel(1),
        lambda: bad.untunnel(1),
        lambda: bad.taken(1, 2),
        lambda: bad.tunnel("3", 4),
    )
    for call in calls:
        with pytest.raises(TypeError):
            call()
    with pytest.raises(ValueError):
        bad.tunnel(-1, 4)
    with pytest.raises(OSError):  # not an epoll
        bad.poll(2**30, 8, 0)


# -- Flow on the fast path -------------------------------------------------------------------


def test_a_flow_counts_what_the_fast_path_moved(tunnel: Any) -> None:
    t = tunnel()
    t.flow.fast_on()
    assert t.flow.fast == 1
    t.writer.sendall(b"a" * 300)
    assert t.poll() == (1, [])
    assert t.read(300) == b"a" * 300
    assert t.flow.total() == 300 and t.flow.fast == 1  # counted, still on
    t.writer.sendall(b"b" * 200)
    assert t.poll() == (1, [])
    t.flow.close()
    assert t.flow.nbytes == 500 and t.flow.fast == 0
    assert t.fast.untunnel(t.src.fileno(), False) == (0, None, 0)  # the route is gone


def test_a_flow_takes_back_the_refused_bytes_before_it_moves_more(tunnel: Any) -> None:
    t = tunnel(small_dst=True)
    t.flow.fast_on()
    data = os.urandom(1 << 20)
    out = bytearray()
    t.writer.setblocking(False)
    t.reader.setblocking(False)
    sent = 0
    deadline = time.monotonic() + 20
    while len(out) < len(data) and time.monotonic() < deadline:
        if sent < len(data):
            try:
                sent += t.writer.send(data[sent : sent + 8192])
            except BlockingIOError:
                pass
        _, left = t.poll(5)
        if (left or not t.flow.fast) and t.flow.pump() == BLOCKED:
            t.flow.on_writable()
        try:
            out += t.reader.recv(1 << 16)
        except BlockingIOError:
            pass
    assert set(t.armed) == {t.dst.fileno()}, "dst never refused bytes"
    assert bytes(out) == data
    assert t.flow.nbytes == len(data)


def test_a_flow_raises_the_error_the_fast_path_stopped_on(tunnel: Any) -> None:
    t = tunnel()
    t.flow.fast_on()
    t.reader.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, loopback.RST)
    t.reader.close()
    time.sleep(0.05)
    for _ in range(3):
        t.writer.sendall(b"into the void")
        if t.poll()[1]:
            break
    assert t.flow.idle  # settling never raises: the error waits for the next pump
    assert t.flow.fast < 0
    with pytest.raises(OSError) as e:
        t.flow.pump(True)
    assert e.value.errno in (errno.EPIPE, errno.ECONNRESET)
    assert t.flow.fast == 0


def test_a_flow_read_to_its_end_after_the_fast_path_reports_eof(tunnel: Any) -> None:
    t = tunnel()
    t.flow.fast_on()
    t.writer.sendall(b"early")
    assert t.poll() == (1, [])
    t.writer.sendall(b"late")
    t.writer.shutdown(socket.SHUT_WR)
    time.sleep(0.05)
    assert t.poll()[1]
    assert t.flow.pump() == EOF
    assert t.read(9) == b"earlylate"
    assert t.flow.total() == 9


def test_only_an_idle_flow_with_the_c_loop_goes_on_the_fast_path(tunnel: Any) -> None:
    t = tunnel()
    c_loop, t.flow.copy = t.flow.copy, None  # the Python loop: Python moves every byte
    t.flow.fast_on()
    assert t.flow.fast == 0
    t.flow.copy = c_loop
    t.flow.budget = 10
    t.flow.fast_on()
    assert t.flow.fast == 0
    t.flow.budget = -1
    t.flow.blocked = True
    t.flow.fast_on()
    assert t.flow.fast == 0
    t.writer.sendall(b"still python's")
    assert t.poll()[1] == [(t.src.fileno(), select.EPOLLIN)]


def test_a_python_pump_beside_a_running_route_keeps_the_bytes_in_order(tunnel: Any) -> None:
    t = tunnel()
    t.flow.fast_on()
    t.writer.sendall(b"via python ")
    select.select([t.src], [], [], 5.0)
    assert t.flow.pump(True) == DRAINED
    assert t.flow.fast == 1  # it left nothing behind: the route runs on
    t.writer.sendall(b"then c")
    assert t.poll() == (1, [])
    assert t.read(17) == b"via python then c"
    assert t.flow.total() == 17


def test_a_flow_that_queues_bytes_ends_its_route(tunnel: Any) -> None:
    t = tunnel(small_dst=True)
    t.flow.fast_on()
    while t.flow.write(b"q" * 65536):
        pass
    assert t.flow.blocked and t.flow.fast == 0
    assert t.fast.untunnel(t.src.fileno(), False) == (0, None, 0)
    t.writer.sendall(b"waits for python")
    assert t.poll()[1] == [(t.src.fileno(), select.EPOLLIN)]


def test_a_flow_that_passes_a_fin_on_ends_its_route(tunnel: Any) -> None:
    t = tunnel()
    t.flow.fast_on()
    t.flow.finish()
    assert t.flow.fast == 0 and t.flow.shut
    assert t.reader.recv(1) == b""
    assert t.fast.untunnel(t.src.fileno(), False) == (0, None, 0)
