"""``Flow``: one direction of a relay, on real loopback TCP sockets.

Every test runs twice: through the copy loop in Python (``copy_py``) and through the C
one (``splice/io/_copy.c``). The compiled build ships the C loop; on the interpreted
run it is compiled here from the same source, so both builds test both loops.
"""

from __future__ import annotations

import importlib.util
import os
import select
import shutil
import socket
import struct
import subprocess
import sysconfig
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import splice.io
from splice.build import build
from splice.io import flow as flow_mod
from splice.io.flow import BLOCKED, CHUNK, DONE, DRAINED, EOF, CopyLoop, Flow
from splice.io.pipes import PipePool

Pair = tuple[socket.socket, socket.socket]
#: SO_LINGER on, 0 s: close() sends RST
_RST = struct.pack("ii", 1, 0)


def _compile_copy(tmp: Path) -> CopyLoop:
    """The C loop: the installed one, else built from ``_copy.c`` with Python's compiler."""
    if flow_mod.NATIVE_COPY is not None:
        return flow_mod.NATIVE_COPY
    src = Path(splice.io.__file__).parent / "_copy.c"
    out = tmp / f"_copy{sysconfig.get_config_var('EXT_SUFFIX')}"
    cc = (sysconfig.get_config_var("CC") or "cc").split()[0]
    cc = cc if shutil.which(cc) else "cc"
    include = sysconfig.get_paths()["include"]
    cmd = [cc, "-shared", "-fPIC", "-O2", "-Wall", "-Werror", f"-I{include}", str(src), "-o"]
    subprocess.run([*cmd, str(out)], check=True, timeout=120)
    spec = importlib.util.spec_from_file_location("_copy", out)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    copy: CopyLoop = mod.copy
    return copy


@pytest.fixture(scope="module")
def c_copy(tmp_path_factory: pytest.TempPathFactory) -> CopyLoop:
    return _compile_copy(tmp_path_factory.mktemp("copy"))


@pytest.fixture(params=["python", "c"])
def loop(request: pytest.FixtureRequest, c_copy: CopyLoop) -> CopyLoop | None:
    """What ``Flow.copy`` is set to: None runs ``copy_py``."""
    return None if request.param == "python" else c_copy


def _pair(rcvbuf: int = 0) -> Pair:
    with socket.create_server(("127.0.0.1", 0)) as ls:
        if rcvbuf:
            ls.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        a = socket.create_connection(ls.getsockname())
        b, _ = ls.accept()
    for s in (a, b):
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return a, b


class Rig:
    """writer -> src ==Flow==> dst -> reader"""

    def __init__(self, loop: CopyLoop | None, small_dst: bool = False) -> None:
        self.writer, self.src = _pair()
        self.dst, self.reader = _pair(rcvbuf=4096 if small_dst else 0)
        if small_dst:
            self.dst.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        self.src.setblocking(False)
        self.dst.setblocking(False)
        self.pool = PipePool(4)
        self.armed: list[int] = []
        self.flow = Flow(self.src, self.dst, self.pool, self.armed.append)
        self.flow.copy = loop

    def send(self, data: bytes) -> None:
        self.writer.sendall(data)
        select.select([self.src], [], [], 5.0)

    def read(self, n: int) -> bytes:
        self.reader.settimeout(5.0)
        got = bytearray()
        while len(got) < n:
            chunk = self.reader.recv(n - len(got))
            if not chunk:
                break
            got += chunk
        return bytes(got)

    def close(self) -> None:
        self.flow.close()
        self.pool.close()
        for s in (self.writer, self.src, self.dst, self.reader):
            s.close()


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
    assert (flow_mod.NATIVE_COPY is not None) == (build() == "mypyc")


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
    r.reader.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RST)
    r.reader.close()  # RST
    time.sleep(0.01)
    r.send(b"into the void")
    with pytest.raises(OSError):
        for _ in range(3):  # the first send may still be accepted before the RST lands
            r.flow.pump()
            r.send(b"more")


def test_reading_a_reset_src_raises_oserror(rig: Callable[..., Rig]) -> None:
    r = rig()
    r.writer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RST)
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
    with pytest.raises(OSError):  # not an open socket
        bad(2**30, 2**30, -1, True)
