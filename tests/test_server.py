"""splice serving HTTP end to end (issue 2): a real splice process, real VMs on loopback.

Each test starts its own VMs and its own splice. The world:
- shed ``alpha``: default port = app ``alpha`` (label web), declares ``api`` (app
  ``alpha-api``) and ``docs`` (a port where nothing listens);
- shed ``beta``: app ``beta``, declares no ports (every port is open);
- shed ``bulk``: the raw big-body server;
- shed ``down``: nothing listens on its default port;
- sheds ``web`` and ``web-N`` (N = the port of app ``web``): the NAME-PORT ambiguity.
"""

from __future__ import annotations

import hashlib
import os
import select
import signal
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
from conftest import MakeApp, MakeBulk, StartSplice
from upstreams import (
    BLOCK,
    DOMAIN,
    BulkServer,
    EchoApp,
    RawClient,
    Response,
    SpliceProcess,
    WsClient,
    as_forwarded,
    assert_shed_error,
    get,
    post,
    random_blocks,
    random_body,
    sha256_hex,
    shed,
)
from wsproto.events import BytesMessage, Message, TextMessage

ALPHA = f"alpha.{DOMAIN}"
BETA = f"beta.{DOMAIN}"
NOSUCH = f"nosuch.{DOMAIN}"
BIG = 64 * 1024 * 1024

REQ_GET = get(ALPHA, "/some/path?q=1", "User-Agent: splice-tests\r\nX-Custom:  kept  as is\r\n")
REQ_JSON_NOSUCH = get(NOSUCH, "/", "Accept: application/json\r\n")
REQ_EXPECT_HEAD = (
    f"POST /upload HTTP/1.1\r\nHost: {ALPHA}\r\nContent-Length: 11\r\nExpect: 100-continue\r\n\r\n"
).encode()
REQ_EXPECT_BODY = b"hello world"
REQ_PARTIAL_HEAD = f"GET / HTTP/1.1\r\nHost: {ALPHA}\r\nUser-Ag".encode()
REQ_CUT_BODY = f"POST / HTTP/1.1\r\nHost: {BETA}\r\nContent-Length: 100\r\n\r\nabc".encode()
REQ_TWO_CL = (
    f"POST / HTTP/1.1\r\nHost: {ALPHA}\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab"
).encode()

#: (request, why it is a 400)
BAD_HOSTS = [
    (b"GET / HTTP/1.1\r\nUser-Agent: x\r\n\r\n", "no Host"),
    (b"GET / HTTP/1.0\r\n\r\n", "HTTP/1.0 without Host"),
    (f"GET / HTTP/1.1\r\nHost: {ALPHA}\r\nHost: {BETA}\r\n\r\n".encode(), "two Hosts"),
    (f"GET / HTTP/1.1\r\nHost: {ALPHA}\r\nHost: {ALPHA}\r\n\r\n".encode(), "the same Host twice"),
    (b"GET / HTTP/1.1\r\nHost: \r\n\r\n", "an empty Host"),
    (f"GET / HTTP/1.1\r\nHost: al pha.{DOMAIN}\r\n\r\n".encode(), "a space in Host"),
    (f"GET / HTTP/1.1\r\nHost: user@{ALPHA}\r\n\r\n".encode(), "userinfo in Host"),
    (f"GET / HTTP/1.1\r\nHost: {ALPHA}:80x\r\n\r\n".encode(), "a non-numeric port"),
    (f"GET / HTTP/1.1\r\nHost: {ALPHA}\x01\r\n\r\n".encode(), "a control character"),
]
#: (request, why it is not ours)
FOREIGN_HOSTS = [
    (b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n", "another domain"),
    (f"GET / HTTP/1.1\r\nHost: alpha.{DOMAIN}.example.com\r\n\r\n".encode(), "our domain inside"),
    (f"GET / HTTP/1.1\r\nHost: {DOMAIN}\r\n\r\n".encode(), "the bare base domain"),
    (b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", "an IPv4 literal"),
    (b"GET / HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n", "an IPv4 literal with port"),
    (b"GET / HTTP/1.1\r\nHost: 2130706433\r\n\r\n", "an IPv4 address as one number"),
    (b"GET / HTTP/1.1\r\nHost: [::1]:8080\r\n\r\n", "an IPv6 literal"),
    (b"GET http://example.com/ HTTP/1.1\r\nHost: alpha.test\r\n\r\n", "absolute-form elsewhere"),
]


@dataclass
class World:
    splice: SpliceProcess
    alpha: EchoApp
    alpha_api: EchoApp
    beta: EchoApp
    web: EchoApp
    web_n: EchoApp
    bulk: BulkServer
    #: a bound, never-listening socket: connecting to its port is refused
    dead: socket.socket

    @property
    def dead_port(self) -> int:
        return int(self.dead.getsockname()[1])

    def apps(self) -> list[EchoApp]:
        return [self.alpha, self.alpha_api, self.beta, self.web, self.web_n]

    def exchange(self, request: bytes) -> Response:
        """Send ``request`` on a new connection; the response, and the connection must close."""
        with self.splice.client() as c:
            c.send(request)
            resp = c.read_response()
            if resp.status >= 400 and resp.header("x-shed-error"):
                assert c.closed_by_peer(), "splice kept the connection open after an error"
            return resp

    def no_dial(self) -> None:
        """Assert that no VM was ever connected to."""
        for app in self.apps():
            app.sync()
            assert app.accepted == 0, app


MakeWorld = Callable[..., World]


@pytest.fixture
def make_world(
    make_app: MakeApp, make_bulk: MakeBulk, start_splice: StartSplice
) -> Iterator[MakeWorld]:
    """``make_world(**settings)``: the VMs above and a splice with those config settings."""
    made: list[World] = []

    def make(**settings: object) -> World:
        w = _world(make_app, make_bulk, start_splice, **settings)
        made.append(w)
        return w

    yield make
    for w in made:
        w.dead.close()


@pytest.fixture
def world(make_world: MakeWorld) -> World:
    return make_world()


def _world(
    make_app: MakeApp, make_bulk: MakeBulk, start_splice: StartSplice, **cfg: object
) -> World:
    alpha, alpha_api, beta = make_app("alpha"), make_app("alpha-api"), make_app("beta")
    web, web_n = make_app("web"), make_app("web-n")
    bulk = make_bulk("bulk")
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))
    dead_port = dead.getsockname()[1]
    ports = [
        {"port": alpha.port, "label": "web"},
        {"port": alpha_api.port, "label": "api"},
        {"port": dead_port, "label": "docs"},
    ]
    sheds = {
        "alpha": shed(alpha, ports=ports),
        "beta": shed(beta),
        "bulk": shed(bulk),
        "down": {"address": "127.0.0.1", "default_port": dead_port},
        "web": shed(web),
        f"web-{web.port}": shed(web_n),
    }
    splice = start_splice(sheds, **cfg)
    return World(splice, alpha, alpha_api, beta, web, web_n, bulk, dead)


# -- requests that reach a VM -----------------------------------------------------------


def test_a_get_reaches_the_vm_with_its_head_unchanged(world: World) -> None:
    resp = world.exchange(REQ_GET)
    assert resp.status == 200
    echo = resp.json()
    assert (echo["name"], echo["method"], echo["target"]) == ("alpha", "GET", "/some/path?q=1")
    assert echo["headers"] == [
        ["Host", ALPHA],
        ["User-Agent", "splice-tests"],
        ["X-Custom", "kept  as is"],
        ["X-Forwarded-For", "127.0.0.1"],
        ["X-Forwarded-Proto", "http"],
        ["X-Forwarded-Host", ALPHA],
    ]
    assert world.alpha.wait_done(0).received == as_forwarded(REQ_GET)


def test_forwarding_fields_sent_by_the_client_are_replaced_by_spliced_ones(world: World) -> None:
    forged = "X-Forwarded-For: 6.6.6.6\r\nx-forwarded-host: evil\r\nX-Forwarded-Proto: https\r\n"
    echo = world.exchange(get(ALPHA, extra=forged)).json()
    assert [h for h in echo["headers"] if h[0].lower().startswith("x-forwarded")] == [
        ["X-Forwarded-For", "127.0.0.1"],
        ["X-Forwarded-Proto", "http"],
        ["X-Forwarded-Host", ALPHA],
    ]


@pytest.mark.parametrize("size", [0, 1, 100_000])
def test_a_post_with_content_length_arrives_whole(world: World, size: int) -> None:
    body = random_body(size, size)
    resp = world.exchange(post(BETA, body, "/form"))
    echo = resp.json()
    assert (echo["name"], echo["method"], echo["body_len"]) == ("beta", "POST", size)
    assert echo["body_sha256"] == sha256_hex(body)


@pytest.mark.parametrize("size", [0, 1, 100_000])
def test_a_chunked_post_arrives_whole_and_still_chunked(world: World, size: int) -> None:
    body = random_body(size, size)
    request = post(BETA, body, "/form", chunked=True)
    resp = world.exchange(request)
    echo = resp.json()
    assert ["Transfer-Encoding", "chunked"] in echo["headers"]
    assert (echo["body_len"], echo["body_sha256"]) == (size, sha256_hex(body))
    assert world.beta.wait_done(0).received == as_forwarded(request)


def test_expect_100_continue_is_answered_before_the_body_is_sent(world: World) -> None:
    with world.splice.client() as c:
        c.send(REQ_EXPECT_HEAD)
        assert c.read_continue() == 100
        c.send(REQ_EXPECT_BODY)
        resp = c.read_response()
    echo = resp.json()
    assert echo["continue_sent"] is True
    assert echo["body_sha256"] == sha256_hex(REQ_EXPECT_BODY)


# -- 64 MiB each way ---------------------------------------------------------------------


def _send_blocks(c: RawClient, head: bytes, seed: int, size: int) -> str:
    digest = hashlib.sha256()
    c.send(head)
    for block in random_blocks(seed, size):
        digest.update(block)
        c.send(block)
    return digest.hexdigest()


@pytest.mark.slow
def test_a_64_mib_upload_arrives_with_the_same_sha256(world: World) -> None:
    head = f"POST /upload HTTP/1.1\r\nHost: bulk.{DOMAIN}\r\nContent-Length: {BIG}\r\n\r\n"
    with world.splice.client() as c:
        sent = _send_blocks(c, head.encode(), 7, BIG)
        answer = c.read_response().json()
    assert answer == {"received": BIG, "sha256": sent}


@pytest.mark.slow
def test_a_64_mib_download_arrives_with_the_same_sha256(world: World) -> None:
    with world.splice.client() as c:
        c.send(get(f"bulk.{DOMAIN}", f"/download/{BIG}"))
        status, _, headers = c.read_head()
        assert (status, ("content-length", str(BIG))) == (200, headers[0])
        digest, left = hashlib.sha256(), BIG - len(c.buf)
        digest.update(c.buf)
        c.buf.clear()
        while left:
            data = c.sock.recv(min(left, 1 << 20))
            assert data, f"closed with {left} bytes to go"
            digest.update(data)
            left -= len(data)
    assert world.bulk.wait_sent(1) == [digest.hexdigest()]


@pytest.mark.slow
def test_a_64_mib_body_streamed_both_ways_at_once_arrives_intact(world: World) -> None:
    head = f"POST /echo HTTP/1.1\r\nHost: bulk.{DOMAIN}\r\nContent-Length: {BIG}\r\n\r\n"
    with world.splice.client() as c:
        sent: list[str] = []
        sender = threading.Thread(
            target=lambda: sent.append(_send_blocks(c, head.encode(), 9, BIG))
        )
        sender.start()
        status, _, _ = c.read_head()
        digest, left = hashlib.sha256(), BIG - len(c.buf)
        digest.update(c.buf)
        c.buf.clear()
        while left:
            data = c.sock.recv(min(left, BLOCK))
            assert data, f"closed with {left} bytes to go"
            digest.update(data)
            left -= len(data)
        sender.join(30)
    assert status == 200
    assert sent == [digest.hexdigest()]


# -- WebSocket, half-close ------------------------------------------------------------------


def test_a_websocket_echo_works_through_splice(world: World) -> None:
    with world.splice.client() as c:
        ws = WsClient(c, ALPHA)
        messages: list[str | bytes] = ["hello", b"\x00\x01binary", "x" * 200_000, b"y" * 3_000_000]
        for message in messages:
            assert ws.echo(message) == message
        ws.close()
        assert c.closed_by_peer()


def test_a_websocket_client_that_stops_reading_holds_back_the_vm_and_loses_nothing(
    world: World,
) -> None:
    """Backpressure both ways inside a tunnel: the client sends 64 MiB of messages
    without reading; the VM's echoes fill the client's socket, the VM stops reading,
    and splice stops reading the client. When the client reads, everything flows."""
    count, size = 64, 1 << 20
    messages = [b"%08d" % i * (size // 8) for i in range(count)]
    with world.splice.client(timeout=30) as c:
        c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 16)
        ws = WsClient(c, ALPHA)
        frames = b"".join(ws.ws.send(BytesMessage(m)) for m in messages)
        sender = threading.Thread(target=c.sock.sendall, args=(frames,))
        sender.start()
        time.sleep(0.5)
        assert sender.is_alive(), "64 MiB went through with nobody reading the echoes"
        got = bytearray()
        while len(got) < count * size:
            event = ws._event()
            assert isinstance(event, Message), event
            got += event.data
        sender.join(10)
        assert not sender.is_alive()
        assert got == b"".join(messages)
        ws.close()
        assert c.closed_by_peer()


def test_a_websocket_clients_last_message_and_fin_seen_in_one_event_both_reach_the_vm(
    world: World,
) -> None:
    """Bytes and a FIN that splice finds together: a short read does not prove the
    socket drained then, and the FIN must still be passed on."""
    with world.splice.client() as c:
        ws = WsClient(c, ALPHA)
        assert ws.echo("first") == "first"
        os.kill(world.splice.pid, signal.SIGSTOP)  # both arrive before splice looks
        try:
            c.send(ws.ws.send(TextMessage("last")))
            c.shut_write()
            time.sleep(0.05)
        finally:
            os.kill(world.splice.pid, signal.SIGCONT)
        event = ws._event()
        assert isinstance(event, TextMessage) and event.data == "last"
        assert c.closed_by_peer()  # the VM saw the FIN and closed


@pytest.mark.parametrize("size", [10, 8 * 1024 * 1024])
def test_a_client_that_half_closes_after_its_request_still_gets_the_whole_response(
    world: World, size: int
) -> None:
    with world.splice.client() as c:
        c.send(get(f"bulk.{DOMAIN}", f"/download/{size}"))
        c.shut_write()
        resp = c.read_response()
        assert c.closed_by_peer()
    assert world.bulk.sent == [sha256_hex(resp.body)]
    assert len(resp.body) == size


def test_a_client_that_half_closes_after_a_post_gets_the_answer(world: World) -> None:
    body = random_body(3, 300_000)
    with world.splice.client() as c:
        c.send(post(BETA, body, chunked=True))
        c.shut_write()
        resp = c.read_response()
        assert c.closed_by_peer()
    assert resp.json()["body_sha256"] == sha256_hex(body)


# -- errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("request_bytes", "status", "code"),
    [
        (get(ALPHA), 200, None),
        (get(NOSUCH), 404, "SHED_NOT_FOUND"),
        (get("example.com"), 404, "UNKNOWN_HOST"),
        (REQ_TWO_CL, 400, "BAD_REQUEST"),
    ],
    ids=["ok", "unknown shed", "unknown host", "bad head"],
)
def test_a_request_already_waiting_when_splice_accepts_is_answered(
    world: World, request_bytes: bytes, status: int, code: str | None
) -> None:
    # stop splice so that connect and request are both queued before it accepts
    os.kill(world.splice.pid, signal.SIGSTOP)
    try:
        c = world.splice.client(timeout=5)
        c.send(request_bytes)
    finally:
        os.kill(world.splice.pid, signal.SIGCONT)
    with c:
        resp = c.read_response()
        if code is None:
            assert resp.status == status
        else:
            assert_shed_error(resp, status, code)
            assert c.closed_by_peer()


def test_a_vm_that_is_down_gets_502_connect_failed(world: World) -> None:
    resp = world.exchange(get(f"down.{DOMAIN}"))
    assert_shed_error(resp, 502, "CONNECT_FAILED")
    assert f"<code>{world.dead_port}</code>" in resp.body.decode()


def test_a_declared_port_where_nothing_listens_gets_502_connect_failed(world: World) -> None:
    resp = world.exchange(
        get(f"{world.dead_port}-alpha.{DOMAIN}", extra="Accept: application/json\r\n")
    )
    assert_shed_error(resp, 502, "CONNECT_FAILED")
    error = resp.json()["error"]
    assert (error["shed"], error["port"]) == ("alpha", world.dead_port)


def test_an_unknown_shed_gets_404_shed_not_found(world: World) -> None:
    resp = world.exchange(get(NOSUCH))
    assert_shed_error(resp, 404, "SHED_NOT_FOUND")
    assert resp.header("content-type") == "text/html; charset=utf-8"
    world.no_dial()


def test_an_undeclared_port_gets_403_and_a_page_listing_the_declared_ports(world: World) -> None:
    resp = world.exchange(get(f"alpha-1.{DOMAIN}:8443"))
    assert_shed_error(resp, 403, "PORT_NOT_EXPOSED")
    page = resp.body.decode()
    for port, label in [(world.alpha.port, "web"), (world.alpha_api.port, "api")]:
        assert f'<a href="http://{port}-alpha.{DOMAIN}:8443/">{port} {label}</a>' in page
    assert f"{world.dead_port} docs" in page
    world.no_dial()


def test_an_error_answers_in_json_when_the_client_accepts_json(world: World) -> None:
    resp = world.exchange(REQ_JSON_NOSUCH)
    assert_shed_error(resp, 404, "SHED_NOT_FOUND")
    assert resp.header("content-type") == "application/json"
    error = resp.json()["error"]
    assert (error["code"], error["shed"], error["port"], error["ports"]) == (
        "SHED_NOT_FOUND",
        "nosuch",
        None,
        [],
    )
    assert error["message"]


def test_a_json_port_not_exposed_error_lists_the_declared_ports(world: World) -> None:
    resp = world.exchange(
        get(f"1-alpha.{DOMAIN}", extra="Accept: text/html;q=0.5, application/json\r\n")
    )
    assert_shed_error(resp, 403, "PORT_NOT_EXPOSED")
    error = resp.json()["error"]
    assert (error["shed"], error["port"]) == ("alpha", 1)
    assert error["ports"] == [
        {"port": world.alpha.port, "label": "web"},
        {"port": world.alpha_api.port, "label": "api"},
        {"port": world.dead_port, "label": "docs"},
    ]


@pytest.mark.parametrize("partial", [REQ_PARTIAL_HEAD, b""], ids=["half a head", "nothing"])
def test_a_head_that_does_not_arrive_in_time_gets_408_head_timeout(
    make_world: MakeWorld, partial: bytes
) -> None:
    w = make_world(head_timeout=0.5)
    with w.splice.client() as c:
        t0 = time.monotonic()
        c.send(partial)
        resp = c.read_response()
        elapsed = time.monotonic() - t0
        assert c.closed_by_peer()
    assert_shed_error(resp, 408, "HEAD_TIMEOUT")
    assert 0.4 <= elapsed < 3.0, elapsed
    w.no_dial()


@pytest.mark.parametrize("trickled", [False, True], ids=["half a head", "a byte at a time"])
def test_a_later_head_on_a_kept_connection_has_its_own_head_timeout(
    make_world: MakeWorld, trickled: bool
) -> None:
    """The clock of a second head starts at its first byte, not at the last request (the
    wait between requests is the idle timeout's), and bytes that keep coming do not
    restart it: a head trickled for longer than the timeout gets 408 all the same."""
    w = make_world(head_timeout=0.5)
    partial = REQ_PARTIAL_HEAD + b"x" * 100  # 5 s at a byte per 50 ms
    with w.splice.client() as c:
        c.send(REQ_GET)
        assert c.read_response().json()["target"] == "/some/path?q=1"
        time.sleep(0.7)  # longer than head_timeout, between requests
        t0 = time.monotonic()
        c.send(partial[:5])
        for i in range(5, len(partial) if trickled else 5):
            if select.select([c.sock], [], [], 0.05)[0]:
                break  # the answer has come
            c.send(partial[i : i + 1])
        resp = c.read_response()
        elapsed = time.monotonic() - t0
    assert_shed_error(resp, 408, "HEAD_TIMEOUT")
    assert 0.4 <= elapsed < 1.5, elapsed


def _waits(pid: int) -> int:
    """The waits of ``pid`` that ended so far: its threads' voluntary context switches."""
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/status") as f:
            total += sum(int(ln.split()[1]) for ln in f if ln.startswith("voluntary_ctxt"))
    return total


@pytest.mark.parametrize("pooled", [False, True], ids=["nothing kept", "a VM connection parked"])
def test_a_quiet_splice_sleeps_and_the_next_connection_wakes_its_deadlines(
    make_world: MakeWorld, pooled: bool
) -> None:
    """With no connection open nothing is due, so an idle splice does not wake (it
    ticked 20 times a second; a shed host runs it beside busy VMs), or once a second
    while a VM connection is parked, which is still closed after its timeout. Its last
    access line is written before it sleeps, and the first connection after the
    quiet spell has its head timeout."""
    w = make_world(
        workers=1, head_timeout=0.5, upstream_keepalive=4 if pooled else 0,
        upstream_keepalive_timeout=1.0,
    )  # fmt: skip
    with w.splice.client() as c:  # a client that closes: its VM connection may be parked
        c.send(get(ALPHA, extra="Connection: close\r\n"))
        assert c.read_response().status == 200
    w.splice.wait_access(1)
    time.sleep(0.2)  # the sweep finds nothing open
    assert w.alpha.conns[0].done.is_set() is not pooled
    before = _waits(w.splice.pid)
    time.sleep(1.5)
    assert _waits(w.splice.pid) - before <= (3 if pooled else 1)
    w.alpha.wait_done(0, timeout=1.5)
    with w.splice.client() as c:
        t0 = time.monotonic()
        c.send(REQ_PARTIAL_HEAD)
        resp = c.read_response()
        elapsed = time.monotonic() - t0
    assert_shed_error(resp, 408, "HEAD_TIMEOUT")
    assert 0.4 <= elapsed < 1.5, elapsed


def test_a_slow_but_steady_head_within_the_timeout_is_relayed(make_world: MakeWorld) -> None:
    w = make_world(head_timeout=1.0)
    with w.splice.client() as c:
        for i in range(0, len(REQ_GET), 8):
            c.send(REQ_GET[i : i + 8])
            time.sleep(0.01)
        assert c.read_response().json()["target"] == "/some/path?q=1"


def test_an_oversized_head_gets_431_head_too_large(make_world: MakeWorld) -> None:
    w = make_world(max_head=4096)
    big = get(ALPHA, extra=f"Cookie: {'c' * 5000}\r\n")
    assert_shed_error(w.exchange(big), 431, "HEAD_TOO_LARGE")
    w.no_dial()
    just_under = get(ALPHA, extra=f"Cookie: {'c' * 3900}\r\n")
    assert len(just_under) < 4096
    assert w.exchange(just_under).json()["name"] == "alpha"


def test_an_oversized_head_with_the_default_limit_gets_431(world: World) -> None:
    big = get(ALPHA, extra="".join(f"X-Filler-{i}: {'f' * 1000}\r\n" for i in range(70)))
    assert_shed_error(world.exchange(big), 431, "HEAD_TOO_LARGE")
    world.no_dial()


@pytest.mark.parametrize(("request_bytes", "why"), BAD_HOSTS, ids=[w for _, w in BAD_HOSTS])
def test_a_bad_missing_or_duplicate_host_gets_400(
    world: World, request_bytes: bytes, why: str
) -> None:
    assert_shed_error(world.exchange(request_bytes), 400, "BAD_REQUEST")
    world.no_dial()


@pytest.mark.parametrize(("request_bytes", "why"), FOREIGN_HOSTS, ids=[w for _, w in FOREIGN_HOSTS])
def test_a_host_outside_the_domains_gets_404_unknown_host_and_nothing_is_dialled(
    world: World, request_bytes: bytes, why: str
) -> None:
    assert_shed_error(world.exchange(request_bytes), 404, "UNKNOWN_HOST")
    world.no_dial()


# -- naming -----------------------------------------------------------------------------------


def test_a_bare_name_reaches_the_sheds_default_port(world: World) -> None:
    echo = world.exchange(get(ALPHA)).json()
    assert (echo["name"], echo["port"]) == ("alpha", world.alpha.port)


def test_port_dash_name_reaches_that_port(world: World) -> None:
    echo = world.exchange(get(f"{world.alpha_api.port}-alpha.{DOMAIN}")).json()
    assert (echo["name"], echo["target"]) == ("alpha-api", "/")


def test_name_dash_port_reaches_that_port(world: World) -> None:
    echo = world.exchange(get(f"alpha-{world.alpha_api.port}.{DOMAIN}", "/x")).json()
    assert (echo["name"], echo["target"]) == ("alpha-api", "/x")


def test_a_host_name_is_matched_case_insensitively_with_a_trailing_dot_and_port(
    world: World,
) -> None:
    echo = world.exchange(get(f"ALPHA-{world.alpha_api.port}.Test.:1234")).json()
    assert echo["name"] == "alpha-api"
    assert ["Host", f"ALPHA-{world.alpha_api.port}.Test.:1234"] in echo["headers"]


def test_a_configured_shed_named_like_name_dash_port_wins_over_the_port(world: World) -> None:
    n = world.web.port
    # web-N is both "shed web, port N" and "shed web-N": the configured shed wins
    assert world.exchange(get(f"web-{n}.{DOMAIN}")).json()["name"] == "web-n"
    # with no shed of that name, web-PORT is shed web on PORT
    assert world.exchange(get(f"web-{world.beta.port}.{DOMAIN}")).json()["name"] == "beta"
    # PORT-NAME is never ambiguous
    assert world.exchange(get(f"{n}-web.{DOMAIN}")).json()["name"] == "web"


@pytest.mark.parametrize(
    ("target", "seen"),
    [
        ("/port/{p}/x/y?z=1", "/x/y?z=1"),
        ("/port/{p}/", "/"),
        ("/port/{p}", "/"),
        ("/port/{p}?q", "/?q"),
        ("/port/{p}//double", "//double"),
        ("/portal/{p}", "/portal/{p}"),
        ("/x/port/{p}/", "/x/port/{p}/"),
    ],
)
def test_a_port_prefix_picks_the_port_and_is_stripped_from_the_target(
    world: World, target: str, seen: str
) -> None:
    p = world.alpha_api.port
    echo = world.exchange(get(ALPHA, target.format(p=p))).json()
    expected_app = "alpha-api" if target.startswith("/port/") else "alpha"
    assert (echo["name"], echo["target"]) == (expected_app, seen.format(p=p))


def test_a_port_prefix_is_kept_when_the_host_names_the_port(world: World) -> None:
    p = world.alpha_api.port
    echo = world.exchange(get(f"{p}-alpha.{DOMAIN}", f"/port/{world.alpha.port}/x")).json()
    assert (echo["name"], echo["target"]) == ("alpha-api", f"/port/{world.alpha.port}/x")


def test_a_port_prefix_in_an_absolute_form_target_is_stripped_from_its_path(world: World) -> None:
    p = world.alpha_api.port
    request = f"GET http://{ALPHA}/port/{p}/abs?x HTTP/1.1\r\nHost: {ALPHA}\r\n\r\n".encode()
    echo = world.exchange(request).json()
    assert (echo["name"], echo["target"]) == ("alpha-api", f"http://{ALPHA}/abs?x")


@pytest.mark.parametrize("target", ["/port/0/", "/port/08080/", "/port/65536/"])
def test_a_port_prefix_that_is_not_a_port_gets_400_invalid_port(world: World, target: str) -> None:
    assert_shed_error(world.exchange(get(ALPHA, target)), 400, "INVALID_PORT")
    world.no_dial()


def test_an_undeclared_port_prefix_gets_403(world: World) -> None:
    assert_shed_error(world.exchange(get(ALPHA, "/port/1/")), 403, "PORT_NOT_EXPOSED")
    world.no_dial()


# -- no fd leaks -----------------------------------------------------------------------------


def _mixed(world: World, i: int) -> None:
    """Connection ``i`` of the fd test: one of ten outcomes."""
    kind = i % 10
    with world.splice.client(timeout=5) as c:
        if kind == 0:  # success, keep-alive, two requests
            c.send(get(ALPHA) + get(ALPHA))
            assert c.read_response().status == c.read_response().status == 200
        elif kind == 1:  # unknown shed
            c.send(get(NOSUCH))
            assert_shed_error(c.read_response(), 404, "SHED_NOT_FOUND")
        elif kind == 2:  # VM down
            c.send(get(f"down.{DOMAIN}"))
            assert_shed_error(c.read_response(), 502, "CONNECT_FAILED")
        elif kind == 3:  # half-close
            c.send(post(BETA, b"x" * 1000, chunked=True))
            c.shut_write()
            assert c.read_response().status == 200
            assert c.closed_by_peer()
        elif kind == 4:  # reset in the middle of a spliced download
            c.send(get(f"bulk.{DOMAIN}", f"/download/{4 << 20}"))
            c.read_head()
            c.reset()
        elif kind == 5:  # reset in the middle of a head
            c.send(REQ_PARTIAL_HEAD)
            c.reset()
        elif kind == 6:  # connect and leave
            pass
        elif kind == 7:  # smuggling head
            c.send(REQ_TWO_CL)
            assert_shed_error(c.read_response(), 400, "BAD_REQUEST")
        elif kind == 8:  # switch sheds on one connection, then reset mid-body
            c.send(get(ALPHA))
            c.read_response()
            c.send(get(BETA))
            c.read_response()
            c.send(REQ_CUT_BODY)
            c.reset()
        else:  # a WebSocket, closed cleanly
            ws = WsClient(c, ALPHA)
            assert ws.echo("ping") == "ping"
            ws.close()


#: pipes the pool may keep after sequential connections (2 flows x 2 connections closing)
MAX_POOLED_PIPES = 4


def _fds(pid: int) -> tuple[Counter[str], Counter[str]]:
    """splice's open fds: (targets that are not pipes, pipe inode -> open ends)."""
    others: Counter[str] = Counter()
    pipes: Counter[str] = Counter()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except FileNotFoundError:
            continue  # closed while we looked
        (pipes if target.startswith("pipe:") else others)[target] += 1
    return others, pipes


@pytest.mark.slow
def test_the_open_fd_count_returns_to_its_start_after_200_mixed_connections(world: World) -> None:
    splice = world.splice
    others0, pipes0 = _fds(splice.pid)
    for i in range(200):
        _mixed(world, i)
    # a line per connection, and one more where a connection moved from alpha to beta
    switches = sum(i % 10 == 8 for i in range(200))
    lines = splice.wait_access(200 + switches)
    deadline = time.monotonic() + 3.0
    while (others := _fds(splice.pid)[0]) != others0 and time.monotonic() < deadline:
        time.sleep(0.05)
    others, pipes = _fds(splice.pid)
    # every socket, epoll and eventfd is back to where it started...
    assert others == others0, f"{sum(others0.values())} fds at start: {others0}, now: {others}"
    # ...and the only extra fds are whole pipes the pool keeps for the next splice
    pooled = pipes - pipes0
    assert all(n == 2 for n in pooled.values()), f"half-open pipes: {pooled}"
    assert len(pooled) <= MAX_POOLED_PIPES, f"{len(pooled)} pipes kept: {pooled}"
    assert len(lines) == 200 + switches
    outcomes = Counter(line.rsplit(" ", 1)[1] for line in lines)
    assert {"OK", "SHED_NOT_FOUND", "CONNECT_FAILED", "BAD_REQUEST"} <= set(outcomes), outcomes
