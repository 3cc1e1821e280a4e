"""The reactor on real sockets and a real uvloop loop: which events reach a handler.

A socket is registered for reading only; writability is reported once a write
was refused and the socket armed, never because an ACK freed send space.
"""

from __future__ import annotations

import asyncio
import select
import socket
from collections.abc import Iterator

import pytest
import uvloop

from splice.io.reactor import EDGE_ALL, Reactor

#: a bounded wait for events that should (or should not) come
SETTLE = 0.05


class Recorder:
    def __init__(self) -> None:
        self.events: list[int] = []

    def on_event(self, fd: int, events: int) -> None:
        self.events.append(events)

    def abort(self) -> None:
        raise AssertionError("no handler here fails")

    def writable(self) -> bool:
        return any(e & select.EPOLLOUT for e in self.events)


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    lp = uvloop.new_event_loop()
    yield lp
    lp.close()


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    yield a, b
    a.close()
    b.close()


def settle(loop: asyncio.AbstractEventLoop) -> None:
    loop.run_until_complete(asyncio.sleep(SETTLE))


def fill(sock: socket.socket) -> int:
    """Write until the socket refuses; how many bytes went."""
    sent = 0
    block = b"x" * 65536
    for _ in range(10_000):  # bounded: a socketpair buffer is a few hundred KiB
        try:
            sent += sock.send(block)
        except BlockingIOError:
            return sent
    raise AssertionError("the socket never filled up")


def drain(sock: socket.socket) -> None:
    for _ in range(10_000):
        try:
            if not sock.recv(1 << 20):
                return
        except BlockingIOError:
            return


def test_a_registered_socket_reports_reads_but_not_writability(
    loop: asyncio.AbstractEventLoop, pair: tuple[socket.socket, socket.socket]
) -> None:
    a, b = pair
    reactor, rec = Reactor(loop), Recorder()
    reactor.register(a.fileno(), rec)
    a.send(b"to b")  # the peer's reads free a's buffer space: no event for that
    drain(b)
    b.send(b"to a")
    settle(loop)
    assert rec.events and all(e & select.EPOLLIN for e in rec.events)
    assert not rec.writable()
    reactor.close()


def test_an_armed_socket_reports_writability_once_space_frees(
    loop: asyncio.AbstractEventLoop, pair: tuple[socket.socket, socket.socket]
) -> None:
    a, b = pair
    reactor, rec = Reactor(loop), Recorder()
    reactor.register(a.fileno(), rec)
    fill(a)
    reactor.arm(a.fileno())
    settle(loop)
    assert not rec.writable()  # still full
    drain(b)
    settle(loop)
    assert rec.writable()
    reactor.close()


def test_arming_a_socket_that_is_writable_already_reports_it_at_once(
    loop: asyncio.AbstractEventLoop, pair: tuple[socket.socket, socket.socket]
) -> None:
    """The space may free between the refused write and the arm: not missed."""
    a, _ = pair
    reactor, rec = Reactor(loop), Recorder()
    reactor.register(a.fileno(), rec)
    reactor.arm(a.fileno())
    settle(loop)
    assert rec.writable()
    reactor.close()


def test_a_socket_armed_before_its_registration_is_registered_for_writability(
    loop: asyncio.AbstractEventLoop, pair: tuple[socket.socket, socket.socket]
) -> None:
    a, _ = pair
    reactor, rec = Reactor(loop), Recorder()
    reactor.arm(a.fileno())  # an error page refused before the first registration
    reactor.register(a.fileno(), rec)
    settle(loop)
    assert rec.writable()
    reactor.close()


def test_forgetting_an_fd_forgets_it_was_armed(
    loop: asyncio.AbstractEventLoop, pair: tuple[socket.socket, socket.socket]
) -> None:
    """fd numbers are reused: the next socket with this number starts unarmed."""
    a, b = pair
    reactor = Reactor(loop)
    reactor.register(a.fileno(), Recorder(), EDGE_ALL)
    assert a.fileno() in reactor.armed
    reactor.forget(a.fileno())
    assert a.fileno() not in reactor.armed
    reactor.unregister(a.fileno())
    rec = Recorder()
    reactor.register(a.fileno(), rec)
    b.send(b"x")
    settle(loop)
    assert rec.events and not rec.writable()
    reactor.close()
