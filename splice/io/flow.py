"""One direction of a relayed connection: bytes from ``src`` to ``dst``.

Small transfers are copied through one shared 64 KiB buffer (``recv_into`` then
``send``): no pipe, no allocation. The compiled build does that loop in C
(``splice/io/_copy.c``: one call per event instead of two socket method calls);
an interpreted install runs the same loop in Python (``copy_py``). The first read
that fills the buffer promotes the flow to ``os.splice`` through a pipe from the
pool, zero-copy from then on.
A flow holds its pipe only while bytes are in flight, so idle connections hold
none. When ``dst`` is full the flow stops reading ``src`` (backpressure: memory
stays bounded whatever the sizes), asks for dst's writability (``arm``) and
resumes from ``on_writable``.

``budget`` caps how much is read from ``src`` (an exact Content-Length body);
-1 means no cap. Sockets are non-blocking; errors such as a reset propagate as
``OSError`` to the connection, which closes both sides.

In a tunnel the connection puts the flow on the C fast path (``fast_on``): the
reactor's ``poll`` then moves src's bytes on plain read events without calling
Python. Both may move bytes of the same flow, one after the other in one thread, as
long as neither leaves any behind: so whatever the flow does (pump, write, flush,
finish) it first collects what a route that stopped left (the bytes dst refused, the
error), and it takes src off the fast path when it leaves state of its own that the C
loop must not run beside (bytes queued, a pipe in use, a FIN passed on, a budget).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from typing import Final

from splice.io.native import FAST, NATIVE_COPY, NATIVE_PUT, CopyLoop
from splice.io.pipes import PIPE_SIZE, PipePool

#: the shared copy buffer: one read that fills it means bulk, so switch to splice
CHUNK: Final = 64 * 1024
_BUF: Final = bytearray(CHUNK)
_MV: Final = memoryview(_BUF)
_SPLICE_FLAGS: Final = os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK
_SHUT_WR: Final = socket.SHUT_WR
# the fast path's functions as module Finals: compiled, ``FAST.untunnel(...)`` is a call
# by name on the NamedTuple, a type lookup and a descriptor at every call
_tunnel: Final = None if FAST is None else FAST.tunnel
_untunnel: Final = None if FAST is None else FAST.untunnel
_taken: Final = None if FAST is None else FAST.taken

# what ``pump`` stopped on
DRAINED: Final = 0  #: src has nothing more now
BLOCKED: Final = 1  #: dst is full; wait for on_writable
EOF: Final = 2  #: src sent FIN (all bytes before it were delivered or are pending)
DONE: Final = 3  #: the budget is spent
_FULL: Final = 4  #: (C loop only) a read filled the buffer: switch to splice


class Flow:
    __slots__ = (
        "arm",
        "blocked",
        "budget",
        "copy",
        "dst",
        "dst_fd",
        "fast",
        "in_pipe",
        "nbytes",
        "pending",
        "pipe",
        "pool",
        "shut",
        "splicing",
        "src",
        "src_fd",
    )

    def __init__(
        self,
        src: socket.socket,
        dst: socket.socket,
        pool: PipePool,
        arm: Callable[[int], None],
    ) -> None:
        self.src = src
        self.dst = dst
        self.src_fd = src.fileno()
        self.dst_fd = dst.fileno()
        self.pool = pool
        #: called with dst's fd when dst refuses bytes: its writability is wanted
        self.arm = arm
        self.pipe: tuple[int, int] | None = None
        self.in_pipe = 0
        #: bytes dst refused, copied out of the shared buffer; None while nothing waits
        #: (an idle connection then holds no buffer of its own)
        self.pending: bytearray | None = None
        self.blocked = False
        self.splicing = False
        self.budget = -1
        self.nbytes = 0
        #: the C copy loop, or None: ``copy_py`` (the tests run each on every build)
        self.copy = NATIVE_COPY
        #: dst has been shut for writing (our FIN passed on)
        self.shut = False
        #: 1: src has a route on the C fast path; 0: none; -errno: the route stopped on
        #: that error, which the next pump, write or flush raises
        self.fast = 0

    def pump(self, short_ok: bool = False) -> int:
        """Move bytes until src is drained, dst is full, src ends, or the budget is spent.

        ``short_ok``: the caller's edge-triggered event carried no hang-up, so a
        ``recv`` shorter than asked means src is drained; saves the recv that would
        say EAGAIN. Never inferred for splice: a socket-to-pipe splice stops short when
        the pipe runs out of buffer slots while the socket still holds data, and with
        a full receive window no new edge would ever come.
        """
        if self.fast:
            self._collect()
        if self.blocked:
            return BLOCKED
        if self.splicing:
            r = self._splice()
            if r >= 0:
                return r
        copy = self.copy
        if copy is not None:
            return self.copy_with(copy, short_ok)
        return self.copy_py(short_ok)

    def copy_with(self, copy: CopyLoop, short_ok: bool) -> int:
        """``pump``'s copy through ``copy``, the C loop: one call per event."""
        while True:
            r, n, tail = copy(self.src_fd, self.dst_fd, self.budget, short_ok)
            self.nbytes += n
            if self.budget > 0:
                self.budget -= n
            if r != _FULL:
                if tail is not None:
                    if isinstance(tail, int):  # status -1: counted, now raised
                        raise OSError(tail, os.strerror(tail))
                    self._stall(tail)
                return r
            self.splicing = True
            self.settle(off=True)
            r = self._splice()
            if r >= 0:
                return r

    def copy_py(self, short_ok: bool) -> int:
        """``pump``'s copy in Python: the loop ``splice/io/_copy.c`` does in C."""
        src, dst = self.src, self.dst
        while True:
            want = CHUNK if self.budget < 0 else min(self.budget, CHUNK)
            if want == 0:
                return DONE
            try:
                n = src.recv_into(_BUF, want)
            except BlockingIOError:
                return DRAINED
            if n == 0:
                return EOF
            self.nbytes += n
            if self.budget > 0:
                self.budget -= n
            try:
                sent = dst.send(_MV[:n])
            except BlockingIOError:
                sent = 0
            if sent < n:
                self._stall(bytearray(_MV[sent:n]))
                return BLOCKED
            if n == CHUNK:
                self.splicing = True
                self.settle(off=True)
                r = self._splice()
                if r >= 0:
                    return r
            elif short_ok and n < want:
                return DRAINED

    def pump_at_most(self, limit: int, short_ok: bool = False) -> tuple[int, int]:
        """``pump`` reading at most ``limit`` (> 0) bytes of src: an exact body, a
        chunk's data. Returns what ``pump`` returns and how many bytes it read."""
        self.settle(off=True)  # the C loop knows no budget
        self.budget = limit
        r = self.pump(short_ok)
        moved = limit - self.budget
        self.budget = -1
        return r, moved

    def _splice(self) -> int:
        """Splice until something stops us; -1 means no pipe is free: copy instead."""
        if self.pipe is None:
            self.pipe = self.pool.take()
            if self.pipe is None:
                return -1
        r, w = self.pipe
        while True:
            if self.in_pipe == 0:
                want = PIPE_SIZE if self.budget < 0 else min(self.budget, PIPE_SIZE)
                if want == 0:
                    self._release()
                    return DONE
                try:
                    n = os.splice(self.src_fd, w, want, flags=_SPLICE_FLAGS)
                except BlockingIOError:
                    self._release()
                    return DRAINED
                if n == 0:
                    self._release()
                    return EOF
                self.in_pipe = n
                self.nbytes += n
                if self.budget > 0:
                    self.budget -= n
            try:
                self.in_pipe -= os.splice(r, self.dst_fd, self.in_pipe, flags=_SPLICE_FLAGS)
            except BlockingIOError:
                pass
            if self.in_pipe:
                self.blocked = True
                self.arm(self.dst_fd)
                return BLOCKED

    def _release(self) -> None:
        if self.pipe is not None and self.in_pipe == 0:
            self.pool.give(self.pipe, True)
            self.pipe = None

    def _stall(self, refused: bytearray) -> None:
        """dst refused these bytes: queue them, ask for its writability, and end the
        fast path's route (it must not run beside a queue)."""
        self.pending = refused
        self.blocked = True
        self.arm(self.dst_fd)
        self.settle(off=True)

    def write(self, data: bytes | bytearray | memoryview) -> bool:
        """Send ``data`` after anything already queued; True when all of it went out."""
        if self.fast:
            self._collect()
        self.nbytes += len(data)
        if self.blocked:
            if self.pending is None:
                self.pending = bytearray(data)
            else:
                self.pending += data
            return False
        if NATIVE_PUT is not None:
            sent = NATIVE_PUT(self.dst_fd, data)
        else:
            try:
                sent = self.dst.send(data)
            except BlockingIOError:
                sent = 0
        if sent < len(data):
            self._stall(bytearray(memoryview(data)[sent:]))
            return False
        return True

    def on_writable(self) -> bool:
        """Flush what dst refused before; True when the flow may pump again."""
        if self.fast:
            self._collect()
        if not self.blocked:
            return False
        if self.in_pipe and self.pipe is not None:
            try:
                self.in_pipe -= os.splice(
                    self.pipe[0], self.dst_fd, self.in_pipe, flags=_SPLICE_FLAGS
                )
            except BlockingIOError:
                return False
            if self.in_pipe:
                return False
            self._release()
        if self.pending:
            try:
                sent = self.dst.send(self.pending)
            except BlockingIOError:
                return False
            del self.pending[:sent]
            if self.pending:
                return False
        self.pending = None
        self.blocked = False
        if self.shut:
            self._shutdown()
        return True

    def finish(self) -> None:
        """Pass src's FIN on to dst once everything queued has been written."""
        if self.fast:
            self._collect(off=True)
        self.shut = True
        if not self.blocked:
            self._shutdown()

    def _shutdown(self) -> None:
        try:
            self.dst.shutdown(_SHUT_WR)
        except OSError:
            pass

    @property
    def idle(self) -> bool:
        """Nothing is queued for dst."""
        if self.fast > 0:
            self.settle()
        return not self.blocked

    # -- the C fast path (splice/io/_copy.c) ------------------------------------

    def fast_on(self) -> None:
        """Let the reactor's C ``poll`` move src's bytes on plain read events.

        For a tunnel's flow, once src's events only pump it (``Relay.relay_only``).
        Only an idle flow goes on: nothing queued, no pipe, no FIN, no budget, and the C
        copy loop in use (a test may pick the Python one).
        """
        if (
            _tunnel is None
            or self.fast
            or self.copy is None
            or self.blocked
            or self.splicing
            or self.shut
            or self.budget >= 0
        ):
            return
        _tunnel(self.src_fd, self.dst_fd)
        self.fast = 1

    def settle(self, off: bool = False) -> None:
        """Fold in what a stopped route left (``off``: end the route either way).

        Never raises: an error the route stopped on waits in ``fast`` for the next
        pump, write or flush.
        """
        if self.fast <= 0:
            return
        assert _untunnel is not None
        got = _untunnel(self.src_fd, off)
        if got is None:  # the route runs on, and left nothing
            return
        n, tail, err = got
        self.nbytes += n
        self.fast = -err
        if tail is not None:  # dst refused these: they go first, once it drains
            self._stall(tail)

    def _collect(self, off: bool = False) -> None:
        """``settle``, then raise the error the route stopped on, if any."""
        self.settle(off)
        if self.fast < 0:
            err, self.fast = -self.fast, 0
            raise OSError(err, os.strerror(err))

    def total(self) -> int:
        """Bytes read from src so far, the fast path's included."""
        if self.fast > 0:
            assert _taken is not None
            self.nbytes += _taken(self.src_fd)
        return self.nbytes

    def close(self) -> None:
        """Give the pipe back (closed if it still holds bytes of this dead connection).

        Call it before src is closed: it takes src off the fast path, whose route is
        by fd number.
        """
        self.settle(off=True)
        if self.pipe is not None:
            self.pool.give(self.pipe, self.in_pipe == 0)
            self.pipe = None
            self.in_pipe = 0
