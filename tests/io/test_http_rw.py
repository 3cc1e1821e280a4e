"""The HTTP path's read and write in C (``_copy.c``: ``onto``, ``put``) and their Python
twins (``http_conn.read_onto``, ``Flow.write``), on real loopback sockets."""

from __future__ import annotations

import errno
import select
import socket
from collections.abc import Callable, Iterator
from types import ModuleType

import loopback
import pytest

from splice import http_conn
from splice.io import flow as flow_mod

Onto = Callable[[int, bytearray, int], int]


@pytest.fixture
def conn() -> Iterator[tuple[socket.socket, socket.socket]]:
    """(peer, ours): ours non-blocking, as splice's sockets are."""
    peer, ours = loopback.pair()
    ours.setblocking(False)
    yield peer, ours
    peer.close()
    ours.close()


@pytest.fixture(params=["python", "c"])
def read_onto(
    request: pytest.FixtureRequest, c_module: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> Callable[[socket.socket, bytearray], int]:
    """``http_conn.read_onto`` with the C ``onto`` or with ``recv``."""
    monkeypatch.setattr(http_conn, "NATIVE_ONTO", c_module.onto if request.param == "c" else None)
    return lambda sock, buf: http_conn.read_onto(sock, sock.fileno(), buf)


def settle(ours: socket.socket) -> None:
    """Wait until ``ours`` has something to read (bytes, an end, a reset)."""
    select.select([ours], [], [], 5.0)


class TestReadOnto:
    def test_what_came_is_appended_and_counted(
        self, conn: tuple[socket.socket, socket.socket], read_onto: Callable[..., int]
    ) -> None:
        peer, ours = conn
        buf = bytearray(b"old ")
        peer.sendall(b"GET / HTTP/1.1\r\n")
        settle(ours)
        assert read_onto(ours, buf) == 16
        assert buf == b"old GET / HTTP/1.1\r\n"

    def test_nothing_there_is_minus_one_and_leaves_the_buffer(
        self, conn: tuple[socket.socket, socket.socket], read_onto: Callable[..., int]
    ) -> None:
        _, ours = conn
        buf = bytearray(b"kept")
        assert read_onto(ours, buf) == -1
        assert buf == b"kept"

    def test_the_end_of_the_stream_is_zero(
        self, conn: tuple[socket.socket, socket.socket], read_onto: Callable[..., int]
    ) -> None:
        peer, ours = conn
        peer.shutdown(socket.SHUT_WR)
        settle(ours)
        buf = bytearray()
        assert read_onto(ours, buf) == 0 and buf == b""

    def test_a_reset_raises_connection_reset(
        self, conn: tuple[socket.socket, socket.socket], read_onto: Callable[..., int]
    ) -> None:
        peer, ours = conn
        peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, loopback.RST)
        peer.close()
        settle(ours)
        with pytest.raises(ConnectionResetError):
            read_onto(ours, bytearray())

    def test_a_read_takes_64_kib_at_most(
        self, conn: tuple[socket.socket, socket.socket], read_onto: Callable[..., int]
    ) -> None:
        peer, ours = conn
        peer.setblocking(False)
        sent = peer.send(b"x" * (200 * 1024))
        settle(ours)
        buf = bytearray()
        got = read_onto(ours, buf)
        assert 0 < got <= 64 * 1024 and len(buf) == got
        while len(buf) < sent:
            settle(ours)
            assert read_onto(ours, buf) > 0
        assert buf == b"x" * sent


class TestOntoArguments:
    def test_most_caps_the_read_and_out_of_range_means_64_kib(
        self, conn: tuple[socket.socket, socket.socket], c_module: ModuleType
    ) -> None:
        peer, ours = conn
        peer.sendall(b"abcdef")
        settle(ours)
        buf = bytearray()
        assert c_module.onto(ours.fileno(), buf, 2) == 2 and buf == b"ab"
        assert c_module.onto(ours.fileno(), buf, -1) == 4 and buf == b"abcdef"

    def test_only_a_bytearray_is_read_onto(
        self, conn: tuple[socket.socket, socket.socket], c_module: ModuleType
    ) -> None:
        with pytest.raises(TypeError, match="bytearray"):
            c_module.onto(conn[1].fileno(), b"", 10)

    def test_an_exported_bytearray_refuses_the_bytes_as_python_does(
        self, conn: tuple[socket.socket, socket.socket], c_module: ModuleType
    ) -> None:
        peer, ours = conn
        buf = bytearray(b"x")
        view = memoryview(buf)
        peer.sendall(b"more")
        settle(ours)
        with pytest.raises(BufferError):
            c_module.onto(ours.fileno(), buf, 10)
        view.release()

    def test_a_bad_descriptor_is_refused(self, c_module: ModuleType) -> None:
        with pytest.raises(ValueError, match="not a file descriptor"):
            c_module.onto(-1, bytearray(), 10)
        with pytest.raises(OSError) as e:
            c_module.onto(2**20, bytearray(), 10)
        assert e.value.errno == errno.EBADF


class TestPut:
    @pytest.mark.parametrize("kind", [bytes, bytearray, memoryview])
    def test_bytes_like_data_is_sent_and_counted(
        self, conn: tuple[socket.socket, socket.socket], c_module: ModuleType, kind: type
    ) -> None:
        peer, ours = conn
        assert c_module.put(ours.fileno(), kind(b"hello")) == 5
        peer.settimeout(5.0)
        assert peer.recv(10) == b"hello"

    def test_a_full_socket_takes_part_then_nothing(self, c_module: ModuleType) -> None:
        peer, ours = loopback.pair(rcvbuf=4096)
        try:
            ours.setblocking(False)
            ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
            total = 0
            for _ in range(1000):
                n = c_module.put(ours.fileno(), b"y" * 65536)
                total += n
                if n == 0:
                    break
            assert n == 0 and total > 0
        finally:
            peer.close()
            ours.close()

    def test_a_reset_peer_raises(
        self, conn: tuple[socket.socket, socket.socket], c_module: ModuleType
    ) -> None:
        peer, ours = conn
        peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, loopback.RST)
        peer.close()
        settle(ours)
        with pytest.raises((ConnectionResetError, BrokenPipeError)):
            for _ in range(3):
                c_module.put(ours.fileno(), b"z")

    def test_arguments_are_checked(self, c_module: ModuleType) -> None:
        with pytest.raises(TypeError, match="2 arguments"):
            c_module.put(1)
        with pytest.raises(TypeError):
            c_module.put(1, "text")


class TestFlowWrite:
    @pytest.mark.parametrize("native", [False, True])
    def test_write_sends_then_queues_what_dst_refused(
        self, c_module: ModuleType, monkeypatch: pytest.MonkeyPatch, native: bool
    ) -> None:
        monkeypatch.setattr(flow_mod, "NATIVE_PUT", c_module.put if native else None)
        rig = loopback.Rig(small_dst=True)
        try:
            assert rig.flow.write(b"first")
            assert rig.read(5) == b"first"
            big = bytes(range(256)) * 4096  # 1 MiB: more than dst's buffers take
            assert not rig.flow.write(big)
            assert rig.flow.blocked and rig.armed
            got = bytearray()
            rig.reader.settimeout(5.0)
            while len(got) < len(big):
                rig.flow.on_writable()
                got += rig.reader.recv(65536)
            assert got == big and not rig.flow.blocked
            assert rig.flow.nbytes == 5 + len(big)
        finally:
            rig.close()
