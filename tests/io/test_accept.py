"""The listener's accept batch in C (``_copy.c``: ``accept``), on real loopback sockets.

The batch must hand over every queued connection once, non-blocking and close-on-exec,
with the peer's address as the socket methods give it, stop at ``most``, and never make
the accept that fails on an empty queue: that one costs the kernel ~6 µs.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(16)
    s.setblocking(False)
    yield s
    s.close()


Batch = tuple[list[tuple[int, tuple[str, int]]], int]


class Owned:
    """The client sockets and accepted fds a test made: all closed after it."""

    def __init__(self) -> None:
        self.socks: list[socket.socket] = []
        self.fds: list[int] = []

    def connect(self, listener: socket.socket, n: int) -> list[socket.socket]:
        """``n`` clients, each in the listener's accept queue once this returns."""
        clients = [socket.socket(listener.family) for _ in range(n)]
        self.socks += clients
        for c in clients:
            c.connect(listener.getsockname()[:2])
        deadline = time.monotonic() + 5.0
        while _queued(listener) < n and time.monotonic() < deadline:
            time.sleep(0.01)
        return clients

    def took(self, batch: Batch) -> Batch:
        """``batch``, an ``accept`` result, whose fds are now this test's to close."""
        self.fds += [fd for fd, _ in batch[0]]
        return batch

    def close(self) -> None:
        for s in self.socks:
            s.close()
        for fd in self.fds:
            os.close(fd)


@pytest.fixture
def owned() -> Iterator[Owned]:
    o = Owned()
    yield o
    o.close()


def _queued(listener: socket.socket) -> int:
    """The accept queue's length, as ``ss -l`` reads it (tcpi_unacked of TCP_INFO)."""
    info = listener.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
    return int.from_bytes(info[24:28], sys.byteorder)


class TestBatch:
    def test_every_queued_connection_comes_once_with_the_peers_address(
        self, c_module: ModuleType, listener: socket.socket, owned: Owned
    ) -> None:
        clients = owned.connect(listener, 3)
        got, err = owned.took(c_module.accept(listener.fileno(), 8))
        assert err == 0
        assert sorted((h, p) for _, (h, p) in got) == sorted(c.getsockname() for c in clients)
        assert len({fd for fd, _ in got}) == 3
        assert c_module.accept(listener.fileno(), 8) == ([], 0)

    def test_accepted_sockets_are_non_blocking_and_close_on_exec(
        self, c_module: ModuleType, listener: socket.socket, owned: Owned
    ) -> None:
        clients = owned.connect(listener, 1)
        ((fd, _),), _ = c_module.accept(listener.fileno(), 1)
        # the wrapper splice makes takes it as non-blocking from its type alone
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_NONBLOCK, 0, fd)
        owned.socks.append(sock)
        assert fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_NONBLOCK
        assert fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC
        assert sock.gettimeout() == 0.0
        assert sock.type == socket.SOCK_STREAM
        with pytest.raises(BlockingIOError):
            sock.recv(1)
        clients[0].sendall(b"x")
        time.sleep(0.05)
        assert sock.recv(1) == b"x"

    def test_most_bounds_the_batch_and_the_rest_stay_queued(
        self, c_module: ModuleType, listener: socket.socket, owned: Owned
    ) -> None:
        owned.connect(listener, 3)
        first, err = owned.took(c_module.accept(listener.fileno(), 2))
        rest, err2 = owned.took(c_module.accept(listener.fileno(), 8))
        assert (len(first), err, len(rest), err2) == (2, 0, 1, 0)

    def test_ipv4_peers_are_written_as_inet_ntop_writes_them(
        self, c_module: ModuleType, listener: socket.socket, owned: Owned
    ) -> None:
        """The C writes the dotted quad by hand: every digit count in every place."""
        octets = [0, 1, 9, 10, 11, 99, 100, 101, 109, 110, 199, 200, 249, 250, 255]
        turns = zip(octets, octets[3:] + octets[:3], octets[7:] + octets[:7], strict=True)
        sources = [f"127.{a}.{b}.{c}" for a, b, c in turns]
        sources = [s for s in sources if not s.endswith((".0", ".255"))]
        for source in sources:
            client = socket.socket()
            owned.socks.append(client)
            client.bind((source, 0))
            client.connect(listener.getsockname())
            deadline = time.monotonic() + 5.0
            got: list[tuple[int, tuple[str, int]]] = []
            while not got and time.monotonic() < deadline:
                got, _ = owned.took(c_module.accept(listener.fileno(), 1))
            assert [peer for _, peer in got] == [client.getsockname()], source

    @pytest.mark.parametrize("most", [0, -1])
    def test_no_room_accepts_nothing(
        self, c_module: ModuleType, listener: socket.socket, owned: Owned, most: int
    ) -> None:
        owned.connect(listener, 1)
        assert c_module.accept(listener.fileno(), most) == ([], 0)
        assert _queued(listener) == 1

    def test_an_empty_queue_is_an_empty_batch(
        self, c_module: ModuleType, listener: socket.socket
    ) -> None:
        assert c_module.accept(listener.fileno(), 4) == ([], 0)

    def test_an_ipv6_peer_is_its_address_without_brackets(
        self, c_module: ModuleType, owned: Owned
    ) -> None:
        v6 = socket.socket(socket.AF_INET6)
        owned.socks.append(v6)
        v6.bind(("::1", 0))
        v6.listen(4)
        v6.setblocking(False)
        clients = owned.connect(v6, 1)
        got, err = owned.took(c_module.accept(v6.fileno(), 4))
        assert err == 0
        assert [(h, p) for _, (h, p) in got] == [clients[0].getsockname()[:2]]
        assert got[0][1][0] == "::1"

    def test_a_listener_without_tcp_info_is_accepted_until_it_is_empty(
        self, c_module: ModuleType, tmp_path: Path, owned: Owned
    ) -> None:
        unix = socket.socket(socket.AF_UNIX)
        owned.socks.append(unix)
        unix.bind(str(tmp_path / "l"))
        unix.listen(4)
        unix.setblocking(False)
        for _ in range(2):
            owned.socks.append(socket.socket(socket.AF_UNIX))
            owned.socks[-1].connect(str(tmp_path / "l"))
        got, err = owned.took(c_module.accept(unix.fileno(), 8))
        assert (err, [(h, p) for _, (h, p) in got]) == (0, [("", 0), ("", 0)])


class TestErrors:
    def test_a_socket_that_does_not_listen_is_its_errno_not_an_exception(
        self, c_module: ModuleType
    ) -> None:
        with socket.socket() as s:
            assert c_module.accept(s.fileno(), 4) == ([], 22)  # EINVAL

    def test_a_closed_fd_is_ebadf(self, c_module: ModuleType) -> None:
        r, w = os.pipe()
        os.close(r)
        os.close(w)
        assert c_module.accept(r, 4) == ([], 9)  # EBADF

    @pytest.mark.parametrize(
        "args, exc",
        [((), TypeError), ((3,), TypeError), ((3, 4, 5), TypeError), ((-1, 4), ValueError),
         (("3", 4), TypeError), ((3, "4"), TypeError), ((3, 2**80), OverflowError)],
    )  # fmt: skip
    def test_bad_arguments_raise(
        self, c_module: ModuleType, args: tuple[object, ...], exc: type[Exception]
    ) -> None:
        with pytest.raises(exc):
            c_module.accept(*args)


def test_no_accept_fails_when_the_queue_is_drained(c_module: ModuleType) -> None:
    """Counted with strace: three queued, a batch of eight makes three accept4 calls,
    none of them the failing one that finds the queue empty."""
    assert shutil.which("strace"), "strace is needed: apt-get install -y strace (make sysdeps)"
    script = textwrap.dedent(
        f"""
        import importlib.util, socket, sys, time
        spec = importlib.util.spec_from_file_location("_copy", {c_module.__file__!r})
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen(8)
        cs = [socket.create_connection(s.getsockname()) for _ in range(3)]
        time.sleep(0.1)
        print("BATCH", flush=True)
        got, err = mod.accept(s.fileno(), 8)
        print("GOT", len(got), err, flush=True)
        """
    )
    out = subprocess.run(
        ["strace", "-f", "-e", "trace=accept4,write", sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert "GOT 3 0" in out.stdout, out.stdout + out.stderr
    trace = out.stderr.split("BATCH", 1)[1]
    calls = [line for line in trace.splitlines() if "accept4(" in line]
    assert len(calls) == 3, trace
    assert not [line for line in calls if "EAGAIN" in line], trace
