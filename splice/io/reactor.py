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
"""

from __future__ import annotations

import logging
import select
from asyncio import AbstractEventLoop
from typing import Protocol

log = logging.getLogger("splice")

#: read and peer half-close, edge-triggered: what a socket is registered for
EDGE_IN = select.EPOLLIN | select.EPOLLRDHUP | select.EPOLLET
#: and writability: a connect in progress, or a socket that refused a write
EDGE_ALL = EDGE_IN | select.EPOLLOUT
#: events taken per wake-up; more stay queued and the loop calls again at once
BATCH = 512


class Handler(Protocol):
    def on_event(self, fd: int, events: int) -> None: ...

    def abort(self) -> None: ...


class Reactor:
    def __init__(self, loop: AbstractEventLoop) -> None:
        self.loop = loop
        self._epoll = select.epoll()
        self.handlers: dict[int, Handler] = {}
        #: fds that are (or, once registered, will be) registered for EPOLLOUT
        self.armed: set[int] = set()
        loop.add_reader(self._epoll.fileno(), self._dispatch)

    def register(self, fd: int, handler: Handler, events: int = EDGE_IN) -> None:
        if events & select.EPOLLOUT:
            self.armed.add(fd)
        elif fd in self.armed:  # armed before it was registered
            events |= select.EPOLLOUT
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
        self.handlers.pop(fd, None)
        self.armed.discard(fd)

    def unregister(self, fd: int) -> None:
        """Remove an fd that stays open (a listener being paused)."""
        self.handlers.pop(fd, None)
        self.armed.discard(fd)
        try:
            self._epoll.unregister(fd)
        except OSError:
            pass

    def _dispatch(self) -> None:
        handlers = self.handlers
        for fd, events in self._epoll.poll(0, BATCH):
            h = handlers.get(fd)
            if h is None:
                continue
            try:
                h.on_event(fd, events)
            except Exception:
                log.exception("handler for fd %d failed; closing its connection", fd)
                try:
                    h.abort()
                except Exception:
                    log.exception("abort failed")

    def close(self) -> None:
        self.loop.remove_reader(self._epoll.fileno())
        self._epoll.close()
