"""``Flow``: one direction of a relay, on real loopback TCP sockets.

Every test runs twice: through the copy loop in Python (``copy_py``) and through the C
one (``splice/io/_copy.c``). The compiled build ships the C loop; on the interpreted
run it is compiled here from the same source (conftest.py), so both builds test both
loops.
"""

from __future__ import annotations

import errno
import os
import select
import socket
import time
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any

import loopback
import pytest

from splice.build import build
from splice.io import native
from splice.io.flow import BLOCKED, CHUNK, DONE, DRAINED, EOF
from splice.io.native import CopyLoop


@pytest.fixture(scope="module")
def c_copy(c_module: ModuleType) -> CopyLoop:
    copy: CopyLoop = c_module.copy
    return copy


@pytest.fixture(params=["python", "c"])
def loop(request: pytest.FixtureRequest, c_copy: CopyLoop) -> CopyLoop | None:
    """What ``Flow.copy`` is set to: None runs ``copy_py``."""
    return None if request.param == "python" else c_copy


class Rig(loopback.Rig):
    """writer -> src ==Flow==> dst -> reader, through the loop under test."""

    def __init__(self, loop: CopyLoop | None, small_dst: bool = False) -> None:
        super().__init__(small_dst)
        self.flow.copy = loop

    def send(self, data: bytes) -> None:
        self.writer.sendall(data)
        select.select([self.src], [], [], 5.0)


@pytest.fixture
def rig(loop: CopyLoop | None) -> Iterator[Callable[..., Rig]]:
    made: list[Rig] = []

    def make(**kw: Any) -> Rig:
        made.append(Rig(loop, **kw))
        return made[-1]

    yield make
    for r in made:
        r.close()


def test_the_build_ships_the_c_loop_exactly_when_compiled() -> None:
    assert (native.NATIVE_COPY is not None) == (build() == "mypyc")


def test_a_message_goes_through_and_a_short_read_means_drained(rig: Callable[..., Rig]) -> None:
    r = rig()
    r.send(b"hello")
    assert r.flow.pump(short_ok=True) == DRAINED
    assert r.read(5) == b"hello"
    assert r.flow.nbytes == 5
    assert not r.flow.blocked and r.armed == []


def test_without_short_ok_it_reads_until_eagain(rig: Callable[..., Rig]) -> None:
    r = rig()
    r.send(b"a" * 1000)
    assert r.flow.pump() == DRAINED
    assert r.flow.pump() == DRAINED  # nothing new: EAGAIN at once
    assert r.read(1000) == b"a" * 1000
    assert r.flow.nbytes == 1000


def test_eof_is_reported_after_the_bytes_before_it(rig: Callable[..., Rig]) -> None:
    r = rig()
    r.writer.sendall(b"last words")
    r.writer.shutdown(socket.SHUT_WR)
    select.select([r.src], [], [], 5.0)
    time.sleep(0.01)  # the FIN follows the bytes
    assert r.flow.pump() == EOF
    assert r.read(10) == b"last words"
    r.flow.finish()
    assert r.reader.recv(1) == b""  # FIN passed on


def test_a_budget_reads_exactly_that_much(rig: Callable[..., Rig]) -> None:
    r = rig()
    r.send(b"0123456789")
    assert r.flow.pump_at_most(4) == (DONE, 4)
    assert r.read(4) == b"0123"
    assert r.flow.budget == -1
    assert r.src.recv(100) == b"456789"  # the rest stays unread


def test_a_budget_larger_than_what_came_drains(rig: Callable[..., Rig]) -> None:
    r = rig()
    r.send(b"abc")
    assert r.flow.pump_at_most(100, short_ok=True) == (DRAINED, 3)
    assert r.read(3) == b"abc"


def test_a_full_dst_blocks_and_keeps_the_tail_in_order(rig: Callable[..., Rig]) -> None:
    r = rig(small_dst=True)
    data = os.urandom(1 << 20)
    out = bytearray()
    sent = 0
    deadline = time.monotonic() + 20
    while len(out) < len(data) and time.monotonic() < deadline:
        if sent < len(data):
            r.writer.setblocking(False)
            try:
                sent += r.writer.send(data[sent : sent + 65536])
            except BlockingIOError:
                pass
        res = r.flow.pump()
        if res == BLOCKED:
            assert r.flow.blocked and set(r.armed) == {r.dst.fileno()}
            select.select([r.reader], [], [], 1.0)
            r.reader.setblocking(False)
            try:
                out += r.reader.recv(1 << 16)
            except BlockingIOError:
                pass
            r.flow.on_writable()
        else:
            r.reader.setblocking(False)
            try:
                out += r.reader.recv(1 << 16)
            except BlockingIOError:
                pass
    assert r.armed, "the small socket buffers never filled"
    assert bytes(out) == data
    assert r.flow.nbytes == len(data)


def test_a_full_buffer_switches_to_splice_and_bulk_stays_intact(rig: Callable[..., Rig]) -> None:
    r = rig()
    data = os.urandom(4 * CHUNK)
    r.send(data[:CHUNK])
    deadline = time.monotonic() + 5
    # a whole chunk readable first, so the first read fills the buffer
    while len(r.src.recv(CHUNK, socket.MSG_PEEK)) < CHUNK and time.monotonic() < deadline:
        time.sleep(0.001)
    r.writer.sendall(data[CHUNK:])
    out = bytearray()
    while len(out) < len(data) and time.monotonic() < deadline + 5:
        r.flow.pump()
        r.reader.setblocking(False)
        try:
            out += r.reader.recv(1 << 20)
        except BlockingIOError:
            time.sleep(0.001)
    assert r.flow.splicing
    assert bytes(out) == data
    assert r.flow.nbytes == len(data)


def test_writing_to_a_reset_peer_raises_oserror(rig: Callable[..., Rig]) -> None:
    r = rig()
    r.reader.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, loopback.RST)
    r.reader.close()  # RST
    time.sleep(0.01)
    r.send(b"into the void")
    with pytest.raises(OSError):
        for _ in range(3):  # the first send may still be accepted before the RST lands
            r.flow.pump()
            r.send(b"more")


def test_bytes_read_before_a_failed_send_are_counted(rig: Callable[..., Rig]) -> None:
    """The bytes of the read whose send fails, and of reads before it in the same call,
    count as read (``nbytes``: the access log's bytes), in the C loop as in Python's."""
    r = rig()
    r.reader.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, loopback.RST)
    r.reader.close()  # RST
    time.sleep(0.01)
    written = 0
    with pytest.raises(OSError) as e:
        for _ in range(3):  # the first send may still be accepted before the RST lands
            r.send(b"x" * 100)
            written += 100
            r.flow.pump()
    assert type(e.value) in (ConnectionResetError, BrokenPipeError)
    assert r.flow.nbytes == written


def test_reading_a_reset_src_raises_oserror(rig: Callable[..., Rig]) -> None:
    r = rig()
    r.writer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, loopback.RST)
    r.writer.close()  # RST
    select.select([r.src], [], [], 5.0)
    with pytest.raises(ConnectionResetError):
        r.flow.pump()


def test_the_c_loop_rejects_bad_arguments(c_copy: CopyLoop) -> None:
    bad: Any = c_copy
    with pytest.raises(TypeError):
        bad(1, 2, 3)
    with pytest.raises(TypeError):
        bad("1", 2, -1, True)
    with pytest.raises(ValueError):
        bad(-1, 2, -1, True)
    # not an open socket: a status, not an exception (the caller raises, after counting)
    assert bad(2**30, 2**30, -1, True) == (-1, 0, errno.EBADF)
