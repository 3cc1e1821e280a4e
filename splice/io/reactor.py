"""One epoll for every connection socket, registered with the event loop once.

Why not ``loop.add_reader`` per socket: each new uvloop poll handle costs six
epoll_ctl calls and an ioctl, about 5 µs per connection (reference/conn-cost).
Here a socket is registered once, edge-triggered, and leaves the epoll set when
it is closed. Handlers must read (or write) until EAGAIN and must tolerate
spurious events: an fd number can be reused within one batch.

Writability is asked for only when needed: a connect in progress, or a write the
socket refused (``arm``). A socket registered for EPOLLOUT for its whole life gets
an event each time the peer's ACK frees send space: ~2 useless events per short
connection, each a Python call. Once armed a socket stays armed (the few that
ever fill up are the bulk ones, where the events are wanted), so arming costs at
most one epoll_ctl per socket.

Under load the reactor holds the wait itself. Nested, every wake-up goes through two
epolls: a socket's event wakes this epoll, which wakes uvloop's, which returns to
Python, which polls this one; the senders (the client, the VM) pay the second
callback too. On keep-alive requests the nesting cost splice 4 % of its throughput
(bench/README.md, "Holding the wait"). So after a busy batch (``HOLD_MIN`` events), the
reactor takes its fd out of uvloop's epoll, puts uvloop's own epoll fd into its
own instead, and waits there directly. A hold ends, and the wait goes back to
uvloop, when any fd uvloop watches is ready (resolver and admin sockets, signals,
the control channel), when a handler gives the loop work (``soon``, ``task``),
when no event comes for ``HOLD_WAIT_MS``, or after ``HOLD_MAX``: uvloop's timers
wait no longer than that. Setting a hold up and undoing it costs ~6 µs (uvloop makes
a new poll handle for the fd it gets back), so a lone event never starts one.

On the compiled build the wait is the C fast path's ``poll`` (``splice/io/_copy.c``):
it moves the bytes of a tunnel's plain read events itself and returns only the
events left for Python, with the count of all of them (a hold counts both).
"""

from __future__ import annotations

import logging
import select
import time
from asyncio import AbstractEventLoop, Task
from collections.abc import Callable, Coroutine
from typing import Any, Final, TypeVar

from mypy_extensions import mypyc_attr

from splice.io.native import FAST

log: Final = logging.getLogger("splice")

# the clock as a module Final: compiled, ``time.monotonic`` is a lookup in the
# ``time`` module's dict at every call
_monotonic: Final = time.monotonic
#: read and peer half-close, edge-triggered: what a socket is registered for
EDGE_IN: Final = select.EPOLLIN | select.EPOLLRDHUP | select.EPOLLET
# the fast path's functions as module Finals: compiled, ``FAST.poll(...)`` is a call by
# name on the NamedTuple, a type lookup and a descriptor at every call
_fast_poll: Final = None if FAST is None else FAST.poll
_untunnel: Final = None if FAST is None else FAST.untunnel
#: writability
OUT: Final = select.EPOLLOUT
#: every event but writability: the ones a handler reads on
NOT_OUT: Final = ~select.EPOLLOUT
#: and writability: a connect in progress, or a socket that refused a write
EDGE_ALL: Final = EDGE_IN | OUT
#: events taken per wake-up; more stay queued and the loop calls again at once
BATCH: Final = 512
#: a batch this big means load: hold the wait. Smaller batches go back to uvloop at
#: once: at 2, TLS passthrough (16 clients, batches of a few events) paid for holds that
#: mostly ended idle, ~20 % more CPU per connection than with no holds at all; at 8 it
#: paid ~8 % less than at 2, and keep-alive (64 clients) still holds (bench/README.md,
#: "Holding the wait")
HOLD_MIN: Final = 8
#: how long a hold waits for the next event before it gives the wait back to uvloop (ms)
HOLD_WAIT_MS: Final = 1
#: the longest one hold lasts: how late uvloop's timers may run under load
HOLD_MAX: Final = 0.002

T = TypeVar("T")


@mypyc_attr(allow_interpreted_subclasses=True)
class Handler:
    """What the reactor hands an fd's events to. A base class, not a Protocol: compiled,
    ``on_event`` on a Protocol is a call by name (a method lookup, a bound call, the
    wrapper's argument parsing and the ints boxed: 370-460 instructions a call, measured),
    on a native base a vtable call. A Python subclass (the tests' handlers) is called
    through mypyc's shadow vtable, so it still overrides."""

    __slots__ = ()

    def on_event(self, fd: int, events: int) -> None:
        raise NotImplementedError

    def abort(self) -> None:
        raise NotImplementedError


class Reactor:
    def __init__(self, loop: AbstractEventLoop) -> None:
        self.loop = loop
        self._epoll = select.epoll()
        self._efd = self._epoll.fileno()
        self.handlers: dict[int, Handler] = {}
        #: fds that are (or, once registered, will be) registered for EPOLLOUT
        self.armed: set[int] = set()
        #: uvloop's own epoll fd, which a hold watches; -1 on another loop: no holds
        backend = getattr(loop, "_get_backend_id", None)
        self._backend: int = backend() if callable(backend) else -1
        #: a handler gave the loop work: no hold, or the hold ends after this batch
        self.loop_wanted = False
        self._holding = False
        self._closed = False
        loop.add_reader(self._epoll.fileno(), self._dispatch)

    @property
    def holding(self) -> bool:
        """The wait is in this epoll now, not in uvloop's."""
        return self._holding

    def soon(self, callback: Callable[[], object]) -> None:
        """``loop.call_soon`` for handlers: a hold ends so the callback runs next."""
        self.loop_wanted = True
        self.loop.call_soon(callback)

    def task(self, coro: Coroutine[Any, Any, T]) -> Task[T]:
        """``loop.create_task`` for handlers: a hold ends so the task starts next."""
        self.loop_wanted = True
        return self.loop.create_task(coro)

    def register(self, fd: int, handler: Handler, events: int = EDGE_IN) -> None:
        if events & OUT:  # compiled, a Final is a C global; select.EPOLLOUT a dict lookup
            self.armed.add(fd)
        elif fd in self.armed:  # armed before it was registered
            events |= OUT
        self._epoll.register(fd, events)
        self.handlers[fd] = handler

    def arm(self, fd: int) -> None:
        """Report writability of ``fd`` from now on: a write to it was refused.

        Edge-triggered, a modify reports the socket at once if it is writable
        already, so space freed since the refused write is not missed.
        """
        if fd in self.armed:
            return
        self.armed.add(fd)
        if fd in self.handlers:
            self._epoll.modify(fd, EDGE_ALL)

    def forget(self, fd: int) -> None:
        """Drop the handler of an fd about to be closed (close removes it from epoll)."""
        handlers = self.handlers
        if fd in handlers:  # compiled, ``in`` and ``del`` are C calls; ``pop`` is by name
            del handlers[fd]
        self.armed.discard(fd)
        if _untunnel is not None:  # its flow took it off already; a route by a reused fd
            _untunnel(fd, True)  # number would send a stranger's bytes

    def unregister(self, fd: int) -> None:
        """Remove an fd that stays open (a listener being paused)."""
        self.handlers.pop(fd, None)
        self.armed.discard(fd)
        try:
            self._epoll.unregister(fd)
        except OSError:
            pass

    def _dispatch(self) -> None:
        """uvloop's callback: this epoll is ready. Hold the wait after a busy batch."""
        self.loop_wanted = False
        n, ready = self._poll(0)
        self._run(ready)
        if n >= HOLD_MIN and self._backend >= 0 and not (self.loop_wanted or self._closed):
            self._hold()

    def _hold(self) -> None:
        """Wait in this epoll, uvloop's inside it, until uvloop has something to do."""
        ep, loop, backend = self._epoll, self.loop, self._backend
        efd = ep.fileno()
        loop.remove_reader(efd)  # the other way round, the two epolls would form a loop
        ep.register(backend, select.EPOLLIN)
        self._holding = True
        end = _monotonic() + HOLD_MAX
        try:
            while True:
                n, ready = self._poll(HOLD_WAIT_MS)
                if not n or self._run(ready) or self.loop_wanted or self._closed:
                    break
                if _monotonic() > end:  # uvloop's timers have waited long enough
                    break
        finally:
            self._holding = False
            if not self._closed:
                ep.unregister(backend)
                loop.add_reader(efd, self._dispatch)

    def _poll(self, timeout_ms: int) -> tuple[int, list[tuple[int, int]]]:
        """How many events came, and those its handlers get (all, without the C path)."""
        if _fast_poll is not None:
            return _fast_poll(self._efd, BATCH, timeout_ms)
        ready = self._epoll.poll(timeout_ms / 1000, BATCH)
        return len(ready), ready

    def _run(self, ready: list[tuple[int, int]]) -> bool:
        """Hand each event to its handler; True when uvloop's epoll was among them."""
        handlers = self.handlers
        backend_ready = False
        for fd, events in ready:
            h = handlers.get(fd)
            if h is None:
                if fd == self._backend:
                    backend_ready = True
                continue
            try:
                h.on_event(fd, events)
            except Exception:
                log.exception("handler for fd %d failed; closing its connection", fd)
                try:
                    h.abort()
                except Exception:
                    log.exception("abort failed")
        return backend_ready

    def close(self) -> None:
        """Stop; a handler may call it during a hold, which then just ends."""
        if self._closed:
            return
        self._closed = True
        self.loop.remove_reader(self._epoll.fileno())  # a no-op during a hold
        self._epoll.close()
