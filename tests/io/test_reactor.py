"""The reactor on real sockets and a real uvloop loop: which events reach a handler.

A socket is registered for reading only; writability is reported once a write
was refused and the socket armed, never because an ACK freed send space.
"""

from __future__ import annotations

import asyncio
import select
import socket
from collections.abc import Callable, Iterator

import pytest
import uvloop

from splice.io.reactor import EDGE_ALL, HOLD_MIN, Handler, Reactor

#: a bounded wait for events that should (or should not) come
SETTLE = 0.05


class Recorder(Handler):
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


# -- holding the wait under load ----------------------------------------------------


class Ring(Handler):
    """``lanes`` tokens, each bouncing between two socketpairs of its own, one reactor
    event per hop: every batch holds ``lanes`` events (tokens never merge), until
    ``cap`` events or ``stop``."""

    def __init__(self, reactor: Reactor, lanes: int = HOLD_MIN, cap: int = 200_000) -> None:
        self.reactor = reactor
        self.lanes = lanes
        self.pairs = [socket.socketpair() for _ in range(2 * lanes)]
        for a, b in self.pairs:
            a.setblocking(False)
            b.setblocking(False)
            reactor.register(a.fileno(), self)
        self.by_fd = {a.fileno(): i for i, (a, _) in enumerate(self.pairs)}
        self.cap = cap
        self.count = 0
        self.stop = False
        #: called with the event count at each event (a test's probe)
        self.probe: Callable[[int], None] = lambda count: None
        self.done: asyncio.Future[int] = reactor.loop.create_future()

    def start(self) -> None:
        for _, b in self.pairs[::2]:
            b.send(b"t")

    def on_event(self, fd: int, events: int) -> None:
        i = self.by_fd[fd]
        drain(self.pairs[i][0])
        self.count += 1
        self.probe(self.count)
        if self.stop or self.count >= self.cap:
            if not self.done.done():
                self.done.set_result(self.count)
            return
        self.pairs[i ^ 1][1].send(b"t")  # the other pair of this lane

    def abort(self) -> None:
        raise AssertionError("no handler here fails")

    def close(self) -> None:
        for a, b in self.pairs:
            self.reactor.forget(a.fileno())
            a.close()
            b.close()


def run_ring(loop: asyncio.AbstractEventLoop, ring: Ring) -> int:
    ring.start()
    return loop.run_until_complete(asyncio.wait_for(ring.done, 30))


def test_under_load_the_reactor_holds_the_wait_yet_uvloop_fds_are_served_at_once(
    loop: asyncio.AbstractEventLoop, pair: tuple[socket.socket, socket.socket]
) -> None:
    """An fd uvloop watches (a resolver's socket) ends a hold: it waits one batch, not
    ``HOLD_MAX`` (in which the ring makes hundreds of hops)."""
    reactor = Reactor(loop)
    ring = Ring(reactor, cap=20_000)
    a, b = pair
    seen: dict[str, int | bool] = {}

    def uv_reader() -> None:
        drain(a)
        seen["served"] = ring.count
        ring.stop = True

    loop.add_reader(a.fileno(), uv_reader)

    def probe(count: int) -> None:
        # from the 200th hop, the first event handled inside a hold: between two holds
        # (each ends after HOLD_MAX) one batch goes through uvloop, and a fixed count
        # could land on it
        if count >= 200 and "written" not in seen and reactor.holding:
            seen["holding"] = reactor.holding
            seen["written"] = count
            b.send(b"wake")

    ring.probe = probe
    run_ring(loop, ring)
    loop.remove_reader(a.fileno())
    assert seen.get("holding") is True
    assert "served" in seen
    assert int(seen["served"]) - int(seen["written"]) <= 2 * ring.lanes
    ring.close()
    reactor.close()


def test_work_a_handler_gives_the_loop_ends_a_hold(loop: asyncio.AbstractEventLoop) -> None:
    """``soon`` and ``task``, each asked for as a hold begins: the loop runs them after
    this batch, not when the hold would have run out (hundreds of hops later)."""
    reactor = Reactor(loop)
    ring = Ring(reactor, cap=50_000)
    asked: dict[str, int] = {}
    ran: dict[str, int] = {}
    was_holding = [True]

    async def started() -> None:
        ran["task"] = ring.count

    def called() -> None:
        ran["soon"] = ring.count

    def probe(count: int) -> None:
        begins = reactor.holding and not was_holding[0]
        was_holding[0] = reactor.holding
        if not begins:
            return
        if count >= 200 and "soon" not in asked:
            asked["soon"] = count
            reactor.soon(called)
        elif count >= 1_000 and "task" not in asked and "soon" in ran:
            asked["task"] = count
            reactor.task(started())
        elif "task" in ran:
            ring.stop = True

    ring.probe = probe
    run_ring(loop, ring)
    for what in ("soon", "task"):
        assert 0 <= ran[what] - asked[what] <= 2 * ring.lanes, (what, asked, ran)
    ring.close()
    reactor.close()


def test_timers_are_not_starved_by_a_load_that_never_pauses(
    loop: asyncio.AbstractEventLoop,
) -> None:
    """A hold lasts ``HOLD_MAX`` at most: a timer fires while the ring keeps going."""
    reactor = Reactor(loop)
    ring = Ring(reactor)  # cap: 200k hops, seconds of work, were timers starved

    def stop() -> None:
        ring.stop = True

    loop.call_later(0.02, stop)
    hops = run_ring(loop, ring)
    assert ring.stop and hops < ring.cap
    ring.close()
    reactor.close()


def test_after_a_hold_the_wait_is_back_with_uvloop(
    loop: asyncio.AbstractEventLoop, pair: tuple[socket.socket, socket.socket]
) -> None:
    reactor = Reactor(loop)
    ring = Ring(reactor, cap=500)
    run_ring(loop, ring)
    settle(loop)  # no event for longer than HOLD_WAIT_MS: the hold has ended
    assert not reactor.holding
    a, b = pair
    rec = Recorder()
    reactor.register(a.fileno(), rec)
    b.send(b"later")
    settle(loop)
    assert rec.events
    ring.close()
    reactor.close()


def test_closing_the_reactor_from_a_handler_during_a_hold(
    loop: asyncio.AbstractEventLoop,
) -> None:
    errors: list[dict[str, object]] = []
    loop.set_exception_handler(lambda _, context: errors.append(context))
    reactor = Reactor(loop)
    ring = Ring(reactor, cap=20_000)
    seen: dict[str, bool] = {}

    def probe(count: int) -> None:
        if count >= 200 and not seen and reactor.holding:  # inside a hold (see above)
            seen["holding"] = reactor.holding
            reactor.close()
            ring.done.set_result(count)

    ring.probe = probe
    ring.start()
    assert loop.run_until_complete(asyncio.wait_for(ring.done, 30)) >= 200
    settle(loop)  # the loop goes on without the closed reactor
    assert seen.get("holding") is True and not reactor.holding
    assert not errors
    for a, b in ring.pairs:
        a.close()
        b.close()


def test_on_a_loop_without_uvloop_s_epoll_there_are_no_holds() -> None:
    lp = asyncio.new_event_loop()  # the selector loop: no backend fd to watch
    try:
        reactor = Reactor(lp)
        ring = Ring(reactor, cap=2_000)
        seen: list[bool] = []
        ring.probe = lambda count: seen.append(reactor.holding)
        assert run_ring(lp, ring) == 2_000
        assert not any(seen)
        ring.close()
        reactor.close()
    finally:
        lp.close()
