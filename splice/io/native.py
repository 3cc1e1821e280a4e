"""What the compiled build adds in C (``splice/io/_copy.c``), or None where it is absent.

An interpreted install runs the same logic in Python: ``Flow.copy_py`` for the copy
loop; for the fast path, every event goes to its handler (``Reactor``); for ``onto``
and ``put``, the socket's ``recv`` and ``send`` (``read_onto``, ``Flow.write``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final, NamedTuple

#: ``copy(src_fd, dst_fd, budget, short_ok) -> (status, nread, tail)``
CopyLoop = Callable[[int, int, int, bool], tuple[int, int, bytearray | None]]


#: ``onto(fd, buf, most) -> n``: n bytes read onto the end of buf, 0 at the end of the
#: stream, -1 when nothing is there now
ReadOnto = Callable[[int, bytearray, int], int]
#: ``put(fd, data) -> n``: n bytes sent, 0 when the socket takes none now
Put = Callable[[int, bytes | bytearray | memoryview], int]


class FastPath(NamedTuple):
    """The fast path of tunnel events: ``poll`` moves the bytes of plain read events of
    the sockets ``tunnel`` put on it, and leaves every other event to Python."""

    #: ``poll(epoll_fd, maxevents, timeout_ms) -> (nevents, events left for Python)``
    poll: Callable[[int, int, int], tuple[int, list[tuple[int, int]]]]
    #: ``tunnel(src_fd, dst_fd)``
    tunnel: Callable[[int, int], None]
    #: ``untunnel(src_fd, force) -> (nread, tail, errno)``, or None: the route runs on
    untunnel: Callable[[int, bool], tuple[int, bytearray | None, int] | None]
    #: ``taken(src_fd) -> nread``
    taken: Callable[[int], int]


def _copy() -> CopyLoop | None:
    try:
        from splice.io._copy import copy
    except ImportError:
        return None
    return copy


def _fast() -> FastPath | None:
    try:
        from splice.io._copy import poll, taken, tunnel, untunnel
    except ImportError:
        return None
    return FastPath(poll, tunnel, untunnel, taken)


def _onto() -> ReadOnto | None:
    try:
        from splice.io._copy import onto
    except ImportError:
        return None
    return onto


def _put() -> Put | None:
    try:
        from splice.io._copy import put
    except ImportError:
        return None
    return put


#: the C copy loop, or None
NATIVE_COPY: Final = _copy()
#: the C fast path, or None
FAST: Final = _fast()
#: the C read onto a bytearray, or None
NATIVE_ONTO: Final = _onto()
#: the C send, or None
NATIVE_PUT: Final = _put()
