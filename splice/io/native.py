"""What the compiled build adds in C (``splice/io/_copy.c``), or None where it is absent.

An interpreted install runs the same logic in Python: ``Flow.copy_py`` for the copy
loop; for the fast path, every event goes to its handler (``Reactor``); for ``onto``
and ``put``, the socket's ``recv`` and ``send`` (``read_onto``, ``Flow.write``); for
``accept``, the listening socket's own accept (``Listener.on_event``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final, NamedTuple

#: ``copy(src_fd, dst_fd, budget, short_ok) -> (status, nread, tail)``: tail is the
#: bytes dst refused, or the errno of status -1 (a socket error)
CopyLoop = Callable[[int, int, int, bool], tuple[int, int, bytearray | int | None]]
#: ``onto(fd, buf, most) -> n``: n bytes read onto the end of buf, 0 at the end of the
#: stream, -1 when nothing is there now
ReadOnto = Callable[[int, bytearray, int], int]
#: ``put(fd, data) -> n``: n bytes sent, 0 when the socket takes none now
Put = Callable[[int, bytes | bytearray | memoryview], int]
#: ``accept(listen_fd, most) -> ([(fd, (host, port)), ...], errno)``: up to ``most``
#: connections, non-blocking, and the errno the batch stopped on (0: none)
AcceptBatch = Callable[[int, int], tuple[list[tuple[int, tuple[str, int]]], int]]


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


def _c(name: str) -> Any:
    """The C module's function ``name``, or None on an install without it."""
    try:
        from splice.io import _copy
    except ImportError:
        return None
    return getattr(_copy, name)


#: the C copy loop, or None
NATIVE_COPY: Final[CopyLoop | None] = _c("copy")
#: the C fast path, or None
FAST: Final[FastPath | None] = (
    None if _c("poll") is None else FastPath(_c("poll"), _c("tunnel"), _c("untunnel"), _c("taken"))
)
#: the C read onto a bytearray, or None
NATIVE_ONTO: Final[ReadOnto | None] = _c("onto")
#: the C send, or None
NATIVE_PUT: Final[Put | None] = _c("put")
#: the C accept batch, or None
NATIVE_ACCEPT: Final[AcceptBatch | None] = _c("accept")
