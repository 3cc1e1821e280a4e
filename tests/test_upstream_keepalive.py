"""Upstream keep-alive: requests that close their connection reuse pooled VM connections.

A client that makes one connection per request (``Connection: close``) gets its
answer from an idle keep-alive connection to the VM when one is pooled; the VM
sees no ``close``; the client gets ``Connection: close`` and a FIN. A connection is
kept only when the response's end is known from its head and nothing else came;
otherwise the response is relayed exactly as it was before pooling, and the
connection is closed. Everything here is on real sockets: splice as a subprocess,
raw VMs on loopback that record what they got and on which connection.
"""

from __future__ import annotations

import hashlib
import re
import socket
import time
from collections.abc import Callable, Iterator

import pytest
from conftest import MakeApp, StartSplice
from upstreams import (
    DOMAIN,
    ConnRecord,
    RawClient,
    Response,
    SpliceProcess,
    Upstream,
    random_blocks,
    shed,
)

HOST = f"alpha.{DOMAIN}"
BIG = 3 * 1024 * 1024 + 17


def close_get(target: str, method: str = "GET", extra: str = "") -> bytes:
    return (
        f"{method} {target} HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n{extra}\r\n".encode()
    )


class FramingVm(Upstream):
    """A keep-alive HTTP/1.1 VM whose target picks the response's framing.

    Every request head it reads is kept in ``heads``, its Content-Length body in
    ``bodies``; ``served[i]`` counts the requests answered on connection ``i``.
    """

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.heads: list[bytes] = []
        self.bodies: list[bytes] = []
        self.junk_sent = 0

    def close_active(self) -> None:
        """Close every open connection from the VM's side (a keep-alive timeout)."""
        with self._lock:
            socks = list(self._active)
        for sock in socks:
            sock.shutdown(socket.SHUT_RDWR)

    def serve(self, sock: socket.socket, rec: ConnRecord) -> None:
        buf = bytearray()
        while True:
            while b"\r\n\r\n" not in buf:
                data = self.recv(sock, rec)
                if not data:
                    return
                buf += data
            end = buf.index(b"\r\n\r\n") + 4
            head = bytes(buf[:end])
            del buf[:end]
            self.heads.append(head)
            length = re.search(rb"\r\ncontent-length: *(\d+)\r\n", head.lower())
            size = int(length.group(1)) if length else 0
            while len(buf) < size:
                data = self.recv(sock, rec)
                if not data:
                    return
                buf += data
            self.bodies.append(bytes(buf[:size]))
            del buf[:size]
            method, target = head.decode("latin-1").split(" ", 2)[:2]
            rec.requests += 1
            if method == "HEAD":
                sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n")
            elif not self.answer(sock, rec, target):
                return
            if b"\r\nconnection: close\r\n" in head.lower():
                return

    def answer(self, sock: socket.socket, rec: ConnRecord, target: str) -> bool:
        """Send the response for ``target``; False: close the connection after it."""
        if target == "/length":
            sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nServer: vm\r\n\r\nhello")
        elif target == "/keep-alive-field":
            sock.sendall(
                b"HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok"
            )
        elif target == "/chunked":
            sock.sendall(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n"
            )
        elif target == "/empty":
            sock.sendall(b"HTTP/1.1 204 No Content\r\nX-A: b\r\n\r\n")
        elif target == "/early":
            sock.sendall(b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n")
            time.sleep(0.02)
            sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        elif target == "/split":
            for piece in (b"HTTP/1.1 200 OK\r\nContent-", b"Length: 4\r\n", b"\r\nab", b"cd"):
                sock.sendall(piece)
                time.sleep(0.02)
        elif target.startswith("/big/"):
            size = int(target.rsplit("/", 1)[1])
            sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
            for block in random_blocks(size, size):
                sock.sendall(block)
        elif target.startswith("/big-chunked/"):
            size = int(target.rsplit("/", 1)[1])
            sock.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            for block in random_blocks(size, size):
                sock.sendall(b"%x\r\n%s\r\n" % (len(block), block))
            sock.sendall(b"0\r\n\r\n")
        elif target == "/vm-closes":
            sock.sendall(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok")
            return False
        elif target == "/to-close":
            sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end")
            return False
        elif target == "/http10":
            sock.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok")
        elif target == "/extra":
            sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokJUNK")
        elif target == "/late-extra":
            sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            time.sleep(0.05)  # parked by now, with nothing unread at the time
            sock.sendall(b"JUNK")
            self.junk_sent += 1
        elif target == "/bad-chunks":
            sock.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nqq")
            return False
        elif target == "/lf-only":
            sock.sendall(b"HTTP/1.1 200 OK\nContent-Length: 2\n\nok")
            return False
        elif target == "/hang-up-when-reused":
            if rec.requests > 1:
                return False  # the race a pool must survive: closed just as it is reused
            sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        else:
            sock.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
        return True


@pytest.fixture
def vm() -> Iterator[FramingVm]:
    v = FramingVm("alpha")
    yield v
    v.close()


def one(port: int, request: bytes, method: str = "GET") -> Response:
    """One request on a new connection; the response, after checking splice closed."""
    with RawClient(port) as c:
        c.send(request)
        r = c.read_response(method)
        assert c.closed_by_peer(), "splice must close after a Connection: close request"
    return r


def wait_for(cond: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, what
        time.sleep(0.01)


def _accepted(vm: FramingVm, n: int) -> Callable[[], bool]:
    """A ``wait_for`` condition: ``vm`` has accepted ``n`` connections."""
    return lambda: vm.accepted == n


def test_one_vm_connection_serves_every_close_request(
    vm: FramingVm, start_splice: StartSplice
) -> None:
    s = start_splice({"alpha": shed(vm)})
    for _ in range(20):
        r = one(s.port, close_get("/length"))
        assert (r.status, r.body, r.header("connection")) == (200, b"hello", "close")
        assert r.header("server") == "vm"
    assert vm.accepted == 1 and vm.conns[0].requests == 20
    # the client's close was for splice: the VM was asked to keep the connection
    assert not any(b"connection:" in h.lower() for h in vm.heads)


def test_with_upstream_keepalive_off_every_request_dials(
    vm: FramingVm, start_splice: StartSplice
) -> None:
    s = start_splice({"alpha": shed(vm)}, upstream_keepalive=0)
    for _ in range(3):
        assert one(s.port, close_get("/length")).body == b"hello"
    assert vm.accepted == 3
    assert all(b"Connection: close" in h for h in vm.heads)


@pytest.mark.parametrize(
    ("target", "method", "body", "interim"),
    [
        ("/chunked", "GET", b"hello world", []),
        ("/empty", "GET", b"", []),
        ("/", "HEAD", b"", []),
        ("/early", "GET", b"ok", [103]),
        ("/split", "GET", b"abcd", []),
        ("/keep-alive-field", "GET", b"ok", []),
    ],
)
def test_every_framed_response_arrives_whole_and_its_connection_is_kept(
    vm: FramingVm,
    start_splice: StartSplice,
    target: str,
    method: str,
    body: bytes,
    interim: list[int],
) -> None:
    s = start_splice({"alpha": shed(vm)})
    for _ in range(3):
        r = one(s.port, close_get(target, method), method)
        assert (r.body, r.interim, r.header("connection")) == (body, interim, "close")
    assert vm.accepted == 1 and vm.conns[0].requests == 3


def test_the_chunked_response_is_passed_on_verbatim(
    vm: FramingVm, start_splice: StartSplice
) -> None:
    s = start_splice({"alpha": shed(vm)})
    with RawClient(s.port) as c:
        c.send(close_get("/chunked"))
        raw = c.read_to_eof()
    assert raw == (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n"
    )


@pytest.mark.parametrize("kind", ["big", "big-chunked"])
def test_big_bodies_are_spliced_and_the_connection_is_kept(
    vm: FramingVm, start_splice: StartSplice, kind: str
) -> None:
    s = start_splice({"alpha": shed(vm)})
    want = hashlib.sha256(b"".join(random_blocks(BIG, BIG))).hexdigest()
    for _ in range(2):
        r = one(s.port, close_get(f"/{kind}/{BIG}"))
        assert len(r.body) == BIG and hashlib.sha256(r.body).hexdigest() == want
    assert vm.accepted == 1


@pytest.mark.parametrize(
    ("target", "raw_after_head"),
    [
        ("/vm-closes", b"ok"),
        ("/to-close", b"until the end"),
        ("/http10", b"ok"),
        ("/extra", b"ok"),
    ],
)
def test_a_response_that_does_not_leave_a_clean_connection_closes_it(
    vm: FramingVm, start_splice: StartSplice, target: str, raw_after_head: bytes
) -> None:
    s = start_splice({"alpha": shed(vm)})
    for i in range(2):
        with RawClient(s.port) as c:
            c.send(close_get(target))
            raw = c.read_to_eof()
        rest = raw.partition(b"\r\n\r\n")[2]
        assert rest == raw_after_head, raw
        wait_for(_accepted(vm, i + 1), "each request gets a new VM connection")
        vm.wait_done(i)  # and splice closed the old one


@pytest.mark.parametrize(
    ("target", "expect"),
    [
        ("/bad-chunks", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close"),
        ("/lf-only", b"HTTP/1.1 200 OK\nContent-Length: 2\n\nok"),
    ],
)
def test_a_response_splice_cannot_frame_is_relayed_as_it_came(
    vm: FramingVm, start_splice: StartSplice, target: str, expect: bytes
) -> None:
    s = start_splice({"alpha": shed(vm)})
    with RawClient(s.port) as c:
        c.send(close_get(target))
        raw = c.read_to_eof()
    assert raw.startswith(expect), raw
    vm.wait_done(0)
    assert vm.accepted == 1


def test_a_pooled_connection_the_vm_closes_is_dropped_and_the_next_dials(
    vm: FramingVm, start_splice: StartSplice
) -> None:
    s = start_splice({"alpha": shed(vm)})
    assert one(s.port, close_get("/length")).body == b"hello"
    vm.close_active()
    vm.wait_done(0)
    assert one(s.port, close_get("/length")).body == b"hello"
    assert vm.accepted == 2


def test_bytes_a_pooled_connection_gets_later_drop_it_and_reach_no_client(
    vm: FramingVm, start_splice: StartSplice
) -> None:
    """Parking skips the peek when the last read drained the socket: anything the VM
    sends afterwards must still evict the connection (the pool is its handler)."""
    s = start_splice({"alpha": shed(vm)})
    assert one(s.port, close_get("/late-extra")).body == b"ok"
    wait_for(lambda: vm.junk_sent == 1, "the VM sent its unasked bytes")
    vm.wait_done(0)  # splice closed it
    assert one(s.port, close_get("/length")).body == b"hello"
    assert vm.accepted == 2


def test_a_reused_connection_found_closed_is_retried_on_a_fresh_one(
    vm: FramingVm, start_splice: StartSplice
) -> None:
    s = start_splice({"alpha": shed(vm)})
    assert one(s.port, close_get("/hang-up-when-reused")).body == b"ok"
    # the pooled connection is taken, the request sent, and the VM hangs up unanswered
    r = one(s.port, close_get("/hang-up-when-reused"))
    assert (r.status, r.body) == (200, b"ok")
    assert vm.accepted == 2 and [c.requests for c in vm.conns] == [2, 1]


def test_a_reused_connection_found_closed_is_retried_with_a_body_that_came_whole(
    vm: FramingVm, start_splice: StartSplice
) -> None:
    s = start_splice({"alpha": shed(vm)})
    put = close_get("/hang-up-when-reused", "PUT", "Content-Length: 7\r\n")
    assert one(s.port, put + b"payload").body == b"ok"
    r = one(s.port, put + b"PAYLOAD")
    assert (r.status, r.body) == (200, b"ok")
    assert vm.accepted == 2 and [c.requests for c in vm.conns] == [2, 1]
    # the VM read the second body twice: on the connection that hung up, then again
    assert vm.bodies == [b"payload", b"PAYLOAD", b"PAYLOAD"]


def test_a_body_still_on_its_way_is_not_retried(vm: FramingVm, start_splice: StartSplice) -> None:
    """Bytes already passed on cannot be sent again: the client sees the VM's close."""
    s = start_splice({"alpha": shed(vm)})
    put = close_get("/hang-up-when-reused", "PUT", "Content-Length: 7\r\n")
    assert one(s.port, put + b"payload").body == b"ok"
    with RawClient(s.port) as c:
        c.send(put + b"PAY")
        wait_for(lambda: len(vm.heads) == 2, "the second head reached the VM")
        c.send(b"LOAD")
        assert c.read_to_eof() == b""
    assert vm.accepted == 1


def test_a_request_that_may_not_be_sent_twice_never_takes_a_pooled_connection(
    vm: FramingVm, start_splice: StartSplice
) -> None:
    """POST is not idempotent (RFC 9110 §9.2.2). On a pooled connection the VM closed
    meanwhile, splice would have to send it again or fail it (RFC 9112 §9.3.1): it
    dials a connection of its own instead, and the VM gets it exactly once."""
    s = start_splice({"alpha": shed(vm)})
    assert one(s.port, close_get("/length")).body == b"hello"  # parks connection 0
    post = close_get("/hang-up-when-reused", "POST", "Content-Length: 7\r\n")
    for body in (b"payload", b"PAYLOAD"):
        r = one(s.port, post + body)
        assert (r.status, r.body) == (200, b"ok")
    assert vm.bodies == [b"", b"payload", b"PAYLOAD"]
    assert [c.requests for c in vm.conns] == [1, 1, 1]
    # the parked connection is still there for the next GET
    assert one(s.port, close_get("/length")).body == b"hello"
    assert [c.requests for c in vm.conns] == [2, 1, 1]


def test_idle_pooled_connections_are_closed_after_the_keepalive_timeout(
    vm: FramingVm, start_splice: StartSplice
) -> None:
    s = start_splice({"alpha": shed(vm)}, upstream_keepalive_timeout=0.3)
    assert one(s.port, close_get("/length")).body == b"hello"
    t0 = time.monotonic()
    vm.wait_done(0, timeout=5.0)
    assert time.monotonic() - t0 < 3.0


def test_the_pool_keeps_at_most_upstream_keepalive_connections(
    vm: FramingVm, start_splice: StartSplice
) -> None:
    s = start_splice({"alpha": shed(vm)}, upstream_keepalive=2)
    clients = [RawClient(s.port) for _ in range(4)]
    for c in clients:  # four exchanges at once: four VM connections
        c.send(close_get("/early"))
    for c in clients:
        assert c.read_response().body == b"ok"
        c.close()
    wait_for(lambda: sum(rec.done.is_set() for rec in vm.conns) == 2, "two closed, two kept")
    assert vm.accepted == 4


def test_a_client_that_half_closes_after_its_request_gets_the_whole_response(
    make_app: MakeApp, start_splice: StartSplice
) -> None:
    app = make_app("alpha")
    s = start_splice({"alpha": shed(app)})
    for _ in range(3):
        with RawClient(s.port) as c:
            c.send(close_get("/"))
            c.shut_write()
            assert c.read_response().json()["name"] == "alpha"
            assert c.closed_by_peer()


def test_bytes_after_a_close_request_are_not_sent_on(
    vm: FramingVm, start_splice: StartSplice
) -> None:
    s = start_splice({"alpha": shed(vm)})
    with RawClient(s.port) as c:
        c.send(close_get("/length") + close_get("/chunked"))
        assert c.read_response().body == b"hello"
        assert c.closed_by_peer()
    assert len(vm.heads) == 1


def test_bodies_and_100_continue_go_through_a_pooled_connection(
    make_app: MakeApp, start_splice: StartSplice
) -> None:
    app = make_app("alpha")
    s = start_splice({"alpha": shed(app)})
    body = b"x" * 300_000
    for i in range(3):
        with RawClient(s.port) as c:
            c.send(
                f"PUT /up HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n"
                f"Content-Length: {len(body)}\r\nExpect: 100-continue\r\n\r\n".encode()
            )
            assert c.read_continue() == 100
            c.send(body)
            echo = c.read_response().json()
            assert c.closed_by_peer()
        assert (echo["conn"], echo["seq"], echo["body_len"]) == (0, i + 1, len(body))
        assert echo["continue_sent"]


def test_a_shed_that_gets_a_proxy_header_is_never_pooled(
    vm: FramingVm, start_splice: StartSplice
) -> None:
    s = start_splice({"alpha": shed(vm, send_proxy="v1")})
    for _ in range(2):
        with RawClient(s.port) as c:
            c.send(close_get("/length"))
            c.read_response()
    wait_for(lambda: vm.accepted == 2, "a connection per client: the header names the client")
    assert all(h.startswith(b"PROXY TCP4 127.0.0.1 127.0.0.1 ") for h in vm.heads)


def test_the_per_shed_limit_counts_only_connections_in_use(
    vm: FramingVm, start_splice: StartSplice
) -> None:
    s: SpliceProcess = start_splice({"alpha": shed(vm)}, max_connections_per_shed=1)
    for _ in range(5):
        assert one(s.port, close_get("/length")).status == 200
    assert vm.accepted == 1


def test_keep_alive_clients_still_get_a_connection_of_their_own(
    vm: FramingVm, start_splice: StartSplice
) -> None:
    s = start_splice({"alpha": shed(vm)})
    assert one(s.port, close_get("/length")).body == b"hello"
    with RawClient(s.port) as c:
        c.send(f"GET /length HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode())
        r = c.read_response()
        assert r.body == b"hello" and r.header("connection") is None
        c.send(close_get("/length"))
        assert c.read_response().body == b"hello"
    # the keep-alive connection took no pooled upstream: it is the client's own
    assert vm.accepted == 2
