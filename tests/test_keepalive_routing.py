"""Per-request routing on one keep-alive connection (issue 4).

Every request on a client connection is routed on its own: another shed or port
retires the open upstream and dials the new one; the same target reuses it. A
request that breaks framing rules (smuggling) gets 400 and none of its bytes reach
a VM; an error on request N answers request N, after 1..N-1, and closes.

The world: shed ``alpha`` (app ``alpha``; every port open, so ``/port/N/`` reaches
apps ``alpha-2`` and ``alpha-3``), shed ``beta`` (app ``beta``; declares only its
own port), shed ``down`` (nothing listens).
"""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from conftest import MakeApp, StartSplice
from upstreams import (
    DOMAIN,
    ConnRecord,
    EchoApp,
    RawClient,
    SpliceProcess,
    Upstream,
    WsClient,
    as_forwarded,
    assert_shed_error,
    get,
    post,
    random_body,
    sha256_hex,
    shed,
)

ALPHA = f"alpha.{DOMAIN}"
BETA = f"beta.{DOMAIN}"
TEN_MIB = 10 * 1024 * 1024

REQ_UPGRADE_FOO = (
    f"GET /refuse-{{status}} HTTP/1.1\r\nHost: {ALPHA}\r\nConnection: Upgrade\r\n"
    "Upgrade: foo/1\r\n\r\n"
)

_POST = f"POST /s HTTP/1.1\r\nHost: {ALPHA}\r\n"
#: (request, what makes it a smuggling risk); all must be 400 with nothing sent on
SMUGGLING = [
    (f"{_POST}Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", "CL then TE"),
    (f"{_POST}Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n", "TE then CL"),
    (f"{_POST}Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello!", "two different CLs"),
    (f"{_POST}Content-Length: 5\r\nContent-Length: 5\r\n\r\nhello", "two equal CLs"),
    (f"{_POST}Content-Length: 5, 5\r\n\r\nhello", "a CL list"),
    (f"{_POST}Content-Length: +5\r\n\r\nhello", "a signed CL"),
    (f"{_POST}Content-Length: 0x5\r\n\r\nhello", "a hex CL"),
    (f"{_POST}Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", "gzip, chunked"),
    (f"{_POST}Transfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n", "chunked, identity"),
    (
        f"{_POST}Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        "TE twice",
    ),
    (f"{_POST}Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n", "an unknown coding"),
    (f"{_POST}Transfer-Encoding : chunked\r\n\r\n0\r\n\r\n", "a space before the colon"),
    (f"{_POST}X-Pad: 1\r\n Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", "obs-fold"),
    (f"{_POST}Content-Length: 3\r\n\tContent-Length: 4\r\n\r\nabcd", "obs-fold with a tab"),
    (
        f"POST /s HTTP/1.0\r\nHost: {ALPHA}\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        "TE in 1.0",
    ),
    ("POST /s HTTP/1.1\nHost: alpha.test\nContent-Length: 1\nContent-Length: 2\n\nab", "bare LFs"),
]
#: (chunked body, how many leading bytes of it are good and may reach the VM); a bare-LF
#: line is not a line: splice (like h11) waits for CRLF, so that case sends one after
BAD_CHUNKS = [
    (b"zz\r\nhello\r\n0\r\n\r\n", 0),
    (b"-5\r\nhello\r\n0\r\n\r\n", 0),
    (b"0x5\r\nhello\r\n0\r\n\r\n", 0),
    (b"10000000000000000\r\nhello\r\n0\r\n\r\n", 0),
    (b"5 5\r\nhello\r\n0\r\n\r\n", 0),
    (b"5\r\nhello\r\nXY\r\nhi\r\n0\r\n\r\n", 10),
    (b"3\r\nhello\r\n0\r\n\r\n", 8),
    (b"5\nhello\n0\n\n\r\n", 0),
    # bare LFs and nothing more: no CRLF will come, so no waiting for one either
    (b"5\nhello\n0\n\n", 0),
    (b"5\r\nhello\n", 8),
]
CHUNKED_HEAD = f"POST /c HTTP/1.1\r\nHost: {ALPHA}\r\nTransfer-Encoding: chunked\r\n\r\n".encode()


@pytest.fixture(params=["framed", "blind"])
def start_splice(request: pytest.FixtureRequest, start_splice: StartSplice) -> StartSplice:
    """Every test here twice: answers framed (the default) and relayed blind
    (``frame_responses = "fronts"``, what a client that is not a front then gets)."""
    if request.param == "framed":
        return start_splice

    def start(sheds: dict[str, object], **settings: object) -> SpliceProcess:
        return start_splice(sheds, frame_responses="fronts", **settings)

    return start


@dataclass
class Net:
    splice: SpliceProcess
    alpha: EchoApp
    alpha2: EchoApp
    alpha3: EchoApp
    beta: EchoApp

    def apps(self) -> list[EchoApp]:
        return [self.alpha, self.alpha2, self.alpha3, self.beta]

    def accepted(self) -> dict[str, int]:
        """Connections each VM accepted, counted after every pending one has landed."""
        for app in self.apps():
            app.sync()
        return {app.name: app.accepted for app in self.apps()}


@pytest.fixture
def net(make_app: MakeApp, start_splice: StartSplice) -> Iterator[Net]:
    alpha, alpha2, alpha3, beta = (make_app(n) for n in ("alpha", "alpha-2", "alpha-3", "beta"))
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))
    sheds = {
        "alpha": shed(alpha),
        "beta": shed(beta, ports=[{"port": beta.port, "label": "web"}]),
        "down": {"address": "127.0.0.1", "default_port": dead.getsockname()[1]},
    }
    with dead:
        yield Net(start_splice(sheds), alpha, alpha2, alpha3, beta)


def ask(c: RawClient, request: bytes) -> dict[str, object]:
    """Send one request, read its response; the VM's echo."""
    c.send(request)
    resp = c.read_response()
    assert resp.status == 200, (resp.status, resp.body[:300])
    echo: dict[str, object] = resp.json()
    return echo


# -- routing each request -------------------------------------------------------------------


def test_alternating_hosts_on_one_connection_each_reach_their_own_vm(net: Net) -> None:
    with net.splice.client() as c:
        for i in range(6):
            echo = ask(c, get(ALPHA if i % 2 == 0 else BETA, f"/r{i}"))
            assert (echo["name"], echo["target"]) == ("alpha" if i % 2 == 0 else "beta", f"/r{i}")
    # each switch retires the old upstream and dials the new one
    assert net.accepted() == {"alpha": 3, "alpha-2": 0, "alpha-3": 0, "beta": 3}


def test_alternating_port_prefixes_on_one_host_reach_the_right_ports(net: Net) -> None:
    p2, p3 = net.alpha2.port, net.alpha3.port
    plan = [(f"/port/{p2}/a", "alpha-2", "/a"), (f"/port/{p3}/b?x", "alpha-3", "/b?x")]
    plan += [
        (f"/port/{p2}", "alpha-2", "/"),
        ("/d", "alpha", "/d"),
        (f"/port/{p3}/", "alpha-3", "/"),
    ]
    with net.splice.client() as c:
        for target, name, seen in plan:
            echo = ask(c, get(ALPHA, target))
            assert (echo["name"], echo["target"]) == (name, seen)
    assert net.accepted() == {"alpha": 1, "alpha-2": 2, "alpha-3": 2, "beta": 0}


def test_requests_for_the_same_target_share_one_upstream_connection(net: Net) -> None:
    p = net.alpha.port
    # five spellings of one target: shed alpha, its default port
    spellings = [(ALPHA, "/n"), (f"{p}-alpha.{DOMAIN}", "/n"), (f"alpha-{p}.{DOMAIN}", "/n")]
    spellings += [(ALPHA.upper() + ".:80", "/n"), (ALPHA, f"/port/{p}/n")]
    with net.splice.client() as c:
        for i in range(15):
            host, target = spellings[i % 5]
            echo = ask(c, get(host, f"{target}{i}"))
            assert (echo["name"], echo["conn"], echo["seq"], echo["target"]) == (
                "alpha",
                0,
                i + 1,
                f"/n{i}",
            )
    assert net.accepted() == {"alpha": 1, "alpha-2": 0, "alpha-3": 0, "beta": 0}


def test_pipelined_requests_across_sheds_are_answered_in_order(net: Net) -> None:
    p2 = net.alpha2.port
    plan = [(ALPHA, "/1", "alpha"), (ALPHA, "/2", "alpha"), (BETA, "/3", "beta")]
    plan += [(ALPHA, f"/port/{p2}/4", "alpha-2"), (BETA, "/5", "beta"), (ALPHA, "/6", "alpha")]
    with net.splice.client() as c:
        c.send(b"".join(get(host, target) for host, target, _ in plan))
        for _, target, name in plan:
            echo = c.read_response().json()
            assert (echo["name"], echo["target"][-2:]) == (name, target[-2:])
    assert net.accepted() == {"alpha": 2, "alpha-2": 1, "alpha-3": 0, "beta": 2}


# -- upgrades ---------------------------------------------------------------------------------


def test_a_websocket_after_plain_requests_on_the_same_connection_echoes(net: Net) -> None:
    with net.splice.client() as c:
        ask(c, get(ALPHA, "/first"))
        ask(c, post(ALPHA, b"some body", "/second", chunked=True))
        ws = WsClient(c, ALPHA)
        messages: list[str | bytes] = ["one", b"two", "three" * 10_000]
        for message in messages:
            assert ws.echo(message) == message
        ws.close()
        assert c.closed_by_peer()
    # the upgrade went down the upstream the plain requests had opened
    assert net.accepted()["alpha"] == 1
    assert net.alpha.conns[0].requests == 3


def test_a_websocket_after_requests_to_another_shed_gets_its_own_upstream(net: Net) -> None:
    with net.splice.client() as c:
        ask(c, get(BETA))
        ask(c, get(ALPHA))
        ask(c, get(BETA))
        ws = WsClient(c, ALPHA)
        assert ws.echo("hi") == "hi"
        ws.close()
    assert net.accepted() == {"alpha": 2, "alpha-2": 0, "alpha-3": 0, "beta": 2}


@pytest.mark.parametrize("status", [400, 426])
def test_a_refused_upgrade_is_followed_by_a_normal_request_on_the_same_connection(
    net: Net, status: int
) -> None:
    with net.splice.client() as c:
        c.send(REQ_UPGRADE_FOO.format(status=status).encode())
        refused = c.read_response()
        assert refused.status == status
        assert refused.json()["target"] == f"/refuse-{status}"
        echo = ask(c, get(ALPHA, "/after"))
        assert (echo["target"], echo["conn"], echo["seq"]) == ("/after", 0, 2)
        # and a different shed after the refusal still routes
        assert ask(c, get(BETA, "/beta"))["name"] == "beta"
    assert net.accepted()["alpha"] == 1


# -- bodies -----------------------------------------------------------------------------------


def _body_plan() -> list[tuple[bytes, int, str]]:
    """(request, body size, body sha256): POSTs of 0 B, 1 B, 10 MiB, both framings, and GETs."""
    plan: list[tuple[bytes, int, str]] = []
    empty = sha256_hex(b"")
    for size in (0, 1, TEN_MIB):
        body = random_body(size, size)
        for chunked in (False, True):
            plan.append((get(ALPHA, f"/get-before-{size}"), 0, empty))
            plan.append(
                (post(ALPHA, body, f"/post-{size}", chunked=chunked), size, sha256_hex(body))
            )
    plan.append((get(ALPHA, "/last"), 0, empty))
    return plan


def test_post_bodies_of_every_size_and_framing_interleave_with_gets_on_one_connection(
    net: Net,
) -> None:
    plan = _body_plan()
    with net.splice.client() as c:
        for seq, (request, size, digest) in enumerate(plan, 1):
            echo = ask(c, request)
            assert (echo["seq"], echo["body_len"], echo["body_sha256"]) == (seq, size, digest)
    assert net.accepted()["alpha"] == 1


def test_pipelined_post_bodies_of_every_size_and_framing_are_framed_right(net: Net) -> None:
    plan = _body_plan()
    with net.splice.client() as c:
        c.send(b"".join(request for request, _, _ in plan))
        for seq, (_, size, digest) in enumerate(plan, 1):
            echo = c.read_response().json()
            assert (echo["seq"], echo["body_len"], echo["body_sha256"]) == (seq, size, digest)
    assert net.accepted()["alpha"] == 1


# -- smuggling --------------------------------------------------------------------------------


@pytest.mark.parametrize(("request_text", "why"), SMUGGLING, ids=[w for _, w in SMUGGLING])
def test_a_smuggling_head_gets_400_and_nothing_reaches_the_vm(
    net: Net, request_text: str, why: str
) -> None:
    with net.splice.client() as c:
        c.send(request_text.encode())
        assert_shed_error(c.read_response(), 400, "BAD_REQUEST")
        assert c.closed_by_peer()
    assert net.accepted()["alpha"] == 0


@pytest.mark.parametrize(("request_text", "why"), SMUGGLING, ids=[w for _, w in SMUGGLING])
def test_a_smuggling_head_after_a_good_request_sends_nothing_past_the_good_one(
    net: Net, request_text: str, why: str
) -> None:
    first = get(ALPHA, "/good")
    with net.splice.client() as c:
        ask(c, first)
        c.send(request_text.encode())
        assert_shed_error(c.read_response(), 400, "BAD_REQUEST")
        assert c.closed_by_peer()
    assert net.alpha.wait_done(0).received == as_forwarded(first)
    assert net.accepted()["alpha"] == 1


@pytest.mark.parametrize(("body", "good"), BAD_CHUNKS)
def test_a_bad_chunk_gets_400_and_no_byte_from_it_on_reaches_the_vm(
    net: Net, body: bytes, good: int
) -> None:
    with net.splice.client() as c:
        c.send(CHUNKED_HEAD + body)
        assert_shed_error(c.read_response(), 400, "BAD_REQUEST")
        assert c.closed_by_peer()
    # the head went on before the body was read; the body stops before the bad line
    received = bytes(net.alpha.wait_done(0).received)
    head = as_forwarded(CHUNKED_HEAD)
    assert received[: len(head)] == head
    assert body[:good].startswith(received[len(head) :])
    assert net.alpha.conns[0].requests == 0


# -- errors after good requests ------------------------------------------------------------------


_JSON = "Accept: application/json\r\n"
#: (request N, status, code, the shed its error names)
ERRORS = [
    (get(f"nosuch.{DOMAIN}", extra=_JSON), 404, "SHED_NOT_FOUND", "nosuch"),
    (get(BETA, "/port/1/", extra=_JSON), 403, "PORT_NOT_EXPOSED", "beta"),
    (get(f"down.{DOMAIN}", extra=_JSON), 502, "CONNECT_FAILED", "down"),
    (get("example.com", extra=_JSON), 404, "UNKNOWN_HOST", None),
    (f"GET / HTTP/1.1\r\n{_JSON}\r\n".encode(), 400, "BAD_REQUEST", None),
]
ERROR_IDS = [code for _, _, code, _ in ERRORS]


def _check_error(c: RawClient, status: int, code: str, shed: str | None) -> None:
    """The error page for request N: its status and code, its shed (not an earlier one's)."""
    resp = c.read_response()
    assert_shed_error(resp, status, code)
    assert c.closed_by_peer()
    if resp.header("content-type") == "application/json":
        named = resp.json()["error"]["shed"]
    else:
        m = re.search(r"Shed: <code>([^<]*)</code>", resp.body.decode())
        named = m[1] if m else None
    assert named == shed, f"the error page names shed {named!r}"


@pytest.mark.parametrize(("bad", "status", "code", "shed_named"), ERRORS, ids=ERROR_IDS)
def test_an_error_on_request_n_answers_it_after_the_earlier_requests_and_closes(
    net: Net, bad: bytes, status: int, code: str, shed_named: str | None
) -> None:
    with net.splice.client() as c:
        for i in range(3):
            assert ask(c, get(ALPHA if i != 1 else BETA, f"/{i}"))["target"] == f"/{i}"
        c.send(bad)
        _check_error(c, status, code, shed_named)


@pytest.mark.parametrize(("bad", "status", "code", "shed_named"), ERRORS, ids=ERROR_IDS)
def test_pipelined_requests_ending_in_an_error_get_every_earlier_response_first(
    net: Net, bad: bytes, status: int, code: str, shed_named: str | None
) -> None:
    with net.splice.client() as c:
        c.send(b"".join(get(ALPHA, f"/{i}") for i in range(3)) + bad)
        for i in range(3):
            resp = c.read_response()
            assert (resp.status, resp.header("x-shed-error")) == (200, None), resp.body[:200]
            assert resp.json()["target"] == f"/{i}"
        _check_error(c, status, code, shed_named)


# -- what the access log says -----------------------------------------------------------------

_LINE = re.compile(r"access \S+ host=(\S+) shed=(\S+) port=(\S+) up=(\d+) down=(\d+) ms=\S+ (\S+)$")


def test_each_run_of_requests_to_one_target_gets_its_own_access_line(net: Net) -> None:
    """One connection from a front that pools: alpha, alpha, beta, alpha, then a shed
    that does not exist. Each target's bytes are its own; the failure names no shed."""
    bodies = [b"a" * 5000, b"b" * 700, b"c" * 30_000, b"d" * 2000]
    hosts = [ALPHA, ALPHA, BETA, ALPHA]
    with net.splice.client() as c:
        for host, body in zip(hosts, bodies, strict=True):
            assert ask(c, post(host, body))["name"] in ("alpha", "beta")
        c.send(get(f"nope.{DOMAIN}"))
        assert_shed_error(c.read_response(), 404, "SHED_NOT_FOUND")
    lines = [_LINE.search(line) for line in net.splice.wait_access(4)]
    got = [(m[1], m[2], m[6]) for m in lines if m is not None]
    assert got == [
        (ALPHA, "alpha", "OK"),
        (BETA, "beta", "OK"),
        (ALPHA, "alpha", "OK"),
        (f"nope.{DOMAIN}", "-", "SHED_NOT_FOUND"),
    ]
    ups = [int(m[4]) for m in lines if m is not None]
    # the echo app answers with what it got: each line's bytes are its own requests'
    assert 5700 < ups[0] < 6200 and 30_000 < ups[1] < 30_300 and 2000 < ups[2] < 2300
    assert ups[3] == 0  # nothing of it reached a VM
    assert all(int(m[5]) > 0 for m in lines[:3] if m is not None)
    assert net.splice.access_lines()[4:] == []


# -- retiring a VM that is slow to end, and other ends of a request ----------------------------


class PacedVm(Upstream):
    """Answers the first request head on a connection with ``Content-Length: 10 * len(pieces)``
    and the body in 10-byte pieces, one every ``pace`` seconds after ``delay``; with
    ``stall``, only the first half. Then it waits for splice to end the connection: the
    FIN of a retire is not its cue to close (the VM a retire has to give up on)."""

    def __init__(self, name: str, pieces: int, pace: float = 0.0, delay: float = 0.0,
                 stall: bool = False) -> None:  # fmt: skip
        super().__init__(name)
        self.pieces, self.pace, self.delay, self.stall = pieces, pace, delay, stall

    def serve(self, sock: socket.socket, rec: ConnRecord) -> None:
        got = b""
        while b"\r\n\r\n" not in got:
            data = self.recv(sock, rec)
            if not data:
                return
            got += data
        time.sleep(self.delay)
        sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (10 * self.pieces))
        for i in range(self.pieces // 2 if self.stall else self.pieces):
            sock.sendall(b"%09d|" % i)
            time.sleep(self.pace)
        if self.stall:
            self._stop.wait(10)  # until the test ends: it never finishes, never closes
            return
        while self.recv(sock, rec):
            pass


def _splice_with(start_splice: StartSplice, vm: Upstream, alpha: EchoApp, **settings: object
                 ) -> SpliceProcess:  # fmt: skip
    return start_splice({"paced": shed(vm), "alpha": shed(alpha)}, **settings)


def test_a_retired_vm_that_stalls_mid_response_ends_the_connection_with_nothing_inside_it(
    make_app: MakeApp, start_splice: StartSplice
) -> None:
    """Relayed blind, the cut response could end anywhere; the next shed's answer must
    not land inside it: after a whole ``retire_timeout`` without a byte, splice closes."""
    alpha = make_app("alpha")
    with PacedVm("paced", pieces=10, stall=True) as vm:
        s = _splice_with(start_splice, vm, alpha, retire_timeout=0.4)
        with s.client() as c:
            t0 = time.monotonic()
            c.send(get(f"paced.{DOMAIN}") + get(ALPHA))
            status, _, headers = c.read_head()
            assert (status, dict(headers)["content-length"]) == (200, "100")
            assert c.read_to_eof() == b"".join(b"%09d|" % i for i in range(5))
            assert time.monotonic() - t0 < 3.0
        assert alpha.accepted == 0
        assert s.wait_access(1)[-1].endswith(" RETIRE_TIMEOUT")


def test_a_retired_vm_still_sending_after_retire_timeout_finishes_and_the_next_is_answered(
    make_app: MakeApp, start_splice: StartSplice
) -> None:
    """A long download or a slow reader is not a stuck VM: each period that moved bytes
    buys another, so the response ends whole and the next request gets its answer."""
    alpha = make_app("alpha")
    with PacedVm("paced", pieces=8, pace=0.2) as vm:
        s = _splice_with(start_splice, vm, alpha, retire_timeout=1.0)
        with s.client() as c:
            c.send(get(f"paced.{DOMAIN}") + get(ALPHA, "/next"))
            resp = c.read_response()
            assert resp.body == b"".join(b"%09d|" % i for i in range(8))
            assert ask(c, b"")["target"] == "/next"


def test_a_bad_chunk_after_a_pipelined_request_gets_that_requests_answer_first(
    make_app: MakeApp, start_splice: StartSplice
) -> None:
    alpha = make_app("alpha")
    with PacedVm("paced", pieces=1, delay=0.3) as vm:
        s = _splice_with(start_splice, vm, alpha)
        host = f"paced.{DOMAIN}"
        bad = f"POST /c HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"
        with s.client() as c:
            c.send(get(host) + bad.encode())
            assert c.read_response().body == b"000000000|"
            assert_shed_error(c.read_response(), 400, "BAD_REQUEST")
            assert c.closed_by_peer()


def test_empty_lines_before_a_request_line_are_ignored(
    make_app: MakeApp, start_splice: StartSplice
) -> None:
    """RFC 9112 §2.2: a client's CRLF after a body is no request, and no late head (no
    408 once ``head_timeout`` has passed with nothing more)."""
    alpha = make_app("alpha")
    s = start_splice({"alpha": shed(alpha)}, head_timeout=0.4)
    with s.client() as c:
        assert ask(c, b"\r\n" + get(ALPHA, "/1") + b"\r\n\n")["target"] == "/1"
        time.sleep(0.8)
        assert ask(c, b"\n\r\n" + get(ALPHA, "/2"))["target"] == "/2"
    assert alpha.wait_done(0).requests == 2


def test_a_head_cut_off_by_the_clients_fin_still_lets_the_earlier_answer_through(
    net: Net,
) -> None:
    """``printf 'GET ...\\r\\n\\r\\nGET /x' | nc -N``: the half head after a request and the
    FIN must not cost the request its answer."""
    with net.splice.client() as c:
        c.send(get(ALPHA, "/whole") + b"GET /ha")
        c.shut_write()
        assert c.read_response().json()["target"] == "/whole"
        assert c.closed_by_peer()
