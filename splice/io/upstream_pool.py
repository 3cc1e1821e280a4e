"""Idle keep-alive connections to VMs, kept for the next request to the same place.

A new connection per request is mostly kernel work on both ends (socket, connect,
accept, close: reference/conn-cost rule 10); a pooled connection costs a dict pop.
An idle connection stays in the reactor's epoll set with the pool as its handler,
so a VM that closes it (its keep-alive timeout) or sends anything unasked is seen
at once and the socket is dropped; a connection is offered back only after a peek
shows nothing unread on it. Connections idle longer than ``idle_timeout`` are
closed by ``sweep``, before a typical server's own keep-alive timeout (5 s for
Node.js and uvicorn) would race a reuse.
"""

from __future__ import annotations

import socket
from collections.abc import Hashable
from typing import Any

from splice.io.reactor import NOT_OUT, Handler, Reactor


class UpstreamPool(Handler):
    def __init__(self, reactor: Reactor, per_key: int, idle_timeout: float) -> None:
        self.reactor = reactor
        #: idle connections kept per key (shed, port, address, dial mode); 0: no pooling
        self.per_key = per_key
        self.idle_timeout = idle_timeout
        #: key -> [(socket, parked at)], most recently parked last (taken first: warm)
        self._idle: dict[Hashable, list[tuple[socket.socket, float]]] = {}
        self._key_of: dict[int, Hashable] = {}
        self.closed = False
        #: connections handed out again, parked, and dropped by an event or the sweep
        self.reused = 0
        self.evicted = 0
        #: reused connections found closed before they answered (the request went again)
        self.stale = 0

    def __len__(self) -> int:
        return len(self._key_of)

    @property
    def enabled(self) -> bool:
        return self.per_key > 0 and not self.closed

    def take(self, key: Hashable) -> socket.socket | None:
        """An idle connection for ``key``, or None; the caller becomes its handler."""
        idle = self._idle.get(key)
        if not idle:
            return None
        sock, _ = idle.pop()
        del self._key_of[sock.fileno()]
        self.reused += 1
        return sock

    def park(self, key: Hashable, sock: socket.socket, now: float, drained: bool = False) -> bool:
        """Keep ``sock`` for ``key``; False (the caller closes it) if it is not clean.

        ``drained``: the caller's last read of ``sock`` proved nothing was left unread
        (short, under an edge-triggered event without a hang-up). Then the peek is
        skipped (a syscall and an exception, ~1 µs): whatever arrives from now on
        raises an event, which reaches the pool as the socket's handler and drops it.
        """
        if not self.enabled:
            return False
        if not drained:
            try:
                # bytes nobody asked for (the next client must not get them), or a FIN
                sock.recv(1, socket.MSG_PEEK)
                return False
            except BlockingIOError:
                pass  # nothing unread and still open: clean
            except OSError:
                return False
        idle = self._idle.setdefault(key, [])
        if len(idle) >= self.per_key:
            self._drop(idle.pop(0)[0])
        fd = sock.fileno()
        idle.append((sock, now))
        self._key_of[fd] = key
        self.reactor.handlers[fd] = self
        return True

    def on_event(self, fd: int, events: int) -> None:
        if events & NOT_OUT:  # any event but "writable" ends an idle connection
            self._evict(fd)

    def abort(self) -> None:
        """A handler error (none is expected): nothing of a connection to end here."""

    def _evict(self, fd: int) -> None:
        key = self._key_of.pop(fd, None)
        if key is None:
            return
        idle = self._idle[key]
        for i, (sock, _) in enumerate(idle):
            if sock.fileno() == fd:
                del idle[i]
                self.evicted += 1
                self._close(sock)
                break
        if not idle:
            del self._idle[key]

    def _drop(self, sock: socket.socket) -> None:
        self._key_of.pop(sock.fileno(), None)
        self._close(sock)

    def _close(self, sock: socket.socket) -> None:
        self.reactor.forget(sock.fileno())
        sock.close()

    def sweep(self, now: float) -> None:
        """Close connections parked longer than ``idle_timeout`` (oldest are first)."""
        limit = now - self.idle_timeout
        for key in list(self._idle):
            idle = self._idle[key]
            n = 0
            while n < len(idle) and idle[n][1] <= limit:
                n += 1
            for sock, _ in idle[:n]:
                self._drop(sock)
            del idle[:n]
            if not idle:
                del self._idle[key]

    def close(self) -> None:
        """Stopping: close every idle connection and park no more."""
        self.closed = True
        for idle in self._idle.values():
            for sock, _ in idle:
                self._drop(sock)
        self._idle.clear()

    def stats(self) -> dict[str, Any]:
        return {
            "idle": len(self),
            "reused": self.reused,
            "evicted": self.evicted,
            "stale": self.stale,
        }
