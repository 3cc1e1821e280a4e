"""``unread``: the bytes a socket holds, on real loopback sockets."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator

import pytest

from splice.io.unread import unread


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    with socket.create_server(("127.0.0.1", 0)) as ls:
        client = socket.create_connection(ls.getsockname())
        server, _ = ls.accept()
        server.setblocking(False)
        yield client, server
        client.close()
        server.close()


def wait_unread(sock: socket.socket, n: int) -> int:
    deadline = time.monotonic() + 5.0
    while (got := unread(sock.fileno())) != n and time.monotonic() < deadline:
        time.sleep(0.001)
    return got


def test_an_empty_socket_has_nothing_unread(pair: tuple[socket.socket, socket.socket]) -> None:
    assert unread(pair[1].fileno()) == 0


def test_bytes_sent_are_counted_until_read(pair: tuple[socket.socket, socket.socket]) -> None:
    client, server = pair
    client.sendall(b"x" * 70_000)
    assert wait_unread(server, 70_000) == 70_000
    server.recv(1000)
    assert unread(server.fileno()) == 69_000


def test_a_fin_alone_is_nothing_unread(pair: tuple[socket.socket, socket.socket]) -> None:
    client, server = pair
    client.sendall(b"ab")
    client.shutdown(socket.SHUT_WR)
    assert wait_unread(server, 2) == 2
    assert server.recv(10) == b"ab"
    assert unread(server.fileno()) == 0
    assert server.recv(10) == b""  # the FIN is still there to read


def test_a_closed_fd_raises() -> None:
    sock = socket.socket()
    fd = os.dup(sock.fileno())
    sock.close()
    os.close(fd)
    with pytest.raises(OSError):
        unread(fd)
