"""Framed answers on a front's connections: a VM's bytes never pass for another shed's.

A front (Caddy, nginx) pools its connections to splice across Host names, so one
client connection carries requests for sheds of different people. Relayed blind,
bytes a VM sends past its last answer would reach the front as the answer to its
next request, maybe one for another shed. On every connection (the default
``frame_responses = "all"``; with ``"fronts"``, on those from ``trusted_fronts``)
splice frames each answer: it knows which request each byte answers, drops the old
VM at once when the next request goes elsewhere, ends the connection when a VM
speaks unasked, and answers 502 when a VM's answer cannot be framed.

The hostile VM is ``ScriptedVm``: it reads request heads and writes exactly the
bytes a test scripts for them, when the test says.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import MakeApp, StartSplice
from upstreams import (
    DOMAIN,
    ConnRecord,
    EchoApp,
    SpliceProcess,
    Upstream,
    assert_shed_error,
    get,
    shed,
)

from splice.config import load_config
from splice.errors import ConfigError

ALPHA = f"alpha.{DOMAIN}"
EVIL = f"evil.{DOMAIN}"
REAL = b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nreal"
FORGED = b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nforged"
#: the front: this test client's address
FRONTS = {"trusted_fronts": ["127.0.0.1/32"]}

#: what the VM writes once it has read ``heads`` request heads: [(delay, bytes), ...]
Script = Callable[[int], list[tuple[float, bytes]]]


class ScriptedVm(Upstream):
    """Reads request heads; after the ``wait_for``-th (1-based) of a connection it writes
    what ``script(heads read so far)`` says, each piece after its delay. Then it reads to
    the end (or ``close_after``: closes once the script is written)."""

    def __init__(self, name: str, script: Script, wait_for: int = 1,
                 close_after: bool = False, reset: bool = False) -> None:  # fmt: skip
        super().__init__(name)
        self.script, self.wait_for, self.close_after = script, wait_for, close_after
        #: with ``close_after``: end with a reset, not a FIN
        self.reset = reset

    def serve(self, sock: socket.socket, rec: ConnRecord) -> None:
        buf = b""
        heads = 0
        while True:
            data = self.recv(sock, rec)
            if not data:
                return
            buf += data
            while b"\r\n\r\n" in buf:
                buf = buf.split(b"\r\n\r\n", 1)[1]
                heads += 1
                rec.requests = heads
                if heads < self.wait_for:
                    continue
                for delay, piece in self.script(heads):
                    time.sleep(delay)
                    sock.sendall(piece)
                if self.close_after:
                    if self.reset:
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
                    return


@dataclass
class World:
    splice: SpliceProcess
    alpha: EchoApp
    vm: ScriptedVm


@pytest.fixture
def world(make_app: MakeApp, start_splice: StartSplice) -> Iterator[Callable[..., World]]:
    vms: list[ScriptedVm] = []

    def make(script: Script, *, wait_for: int = 1, close_after: bool = False,
             reset: bool = False, front: bool = True, **settings: object) -> World:  # fmt: skip
        alpha = make_app("alpha")
        vm = ScriptedVm("evil", script, wait_for, close_after, reset)
        vms.append(vm)
        cfg = {**(FRONTS if front else {}), **settings}
        s = start_splice({"alpha": shed(alpha), "evil": shed(vm)}, **cfg)
        return World(s, alpha, vm)

    yield make
    for vm in vms:
        vm.close()


def outcome(s: SpliceProcess) -> str:
    return s.wait_access(1)[-1].rsplit(" ", 1)[1]


# -- bytes past an answer ---------------------------------------------------------------------


@pytest.mark.parametrize("later", [0.0, 0.2], ids=["with-the-answer", "after-it"])
def test_bytes_past_an_answer_never_pass_for_the_next_sheds_answer(
    world: Callable[..., World], later: float
) -> None:
    """The front asks evil, then alpha on the same connection (pipelined, so splice
    has the alpha request while evil still owes its answer). Evil answers, then
    forges an answer: framed, the forgery is evil's leftover, dropped with evil's
    connection; alpha's own answer is the second one."""
    w = world(lambda _: [(0.0, REAL), (later, FORGED)] if later else [(0.0, REAL + FORGED)])
    with w.splice.client() as c:
        c.send(get(EVIL) + get(ALPHA, "/mine"))
        assert c.read_response().body == b"real"
        second = c.read_response()
        assert second.status == 200 and second.json()["target"] == "/mine", second.body[:200]
    assert w.alpha.wait_done(0).requests == 1


def test_a_front_asking_another_shed_right_after_an_answer_gets_that_sheds_answer(
    world: Callable[..., World],
) -> None:
    """A front's own order: the answer, then at once a request for another shed. The VM
    forges its answer a little later, when splice has the next request; framed, the old
    VM owes nothing and is dropped the moment the request for alpha comes."""
    w = world(lambda _: [(0.0, REAL), (0.3, FORGED)])
    with w.splice.client() as c:
        c.send(get(EVIL))
        assert c.read_response().body == b"real"
        c.send(get(ALPHA, "/mine"))
        assert c.read_response().json()["target"] == "/mine"
        time.sleep(0.5)  # the forgery is written by now: it must not follow either
        c.send(get(ALPHA, "/again"))
        assert c.read_response().json()["target"] == "/again"


def test_a_vm_speaking_unasked_ends_the_connection_and_its_bytes_go_nowhere(
    world: Callable[..., World],
) -> None:
    w = world(lambda _: [(0.0, REAL), (0.2, FORGED)])
    with w.splice.client() as c:
        c.send(get(EVIL))
        assert c.read_response().body == b"real"
        assert c.read_to_eof() == b""
    assert outcome(w.splice) == "UNSOLICITED_RESPONSE"


def test_pipelined_answers_of_every_framing_pass_whole_from_one_read(
    world: Callable[..., World],
) -> None:
    """Six requests in one send; the VM answers all six in one write (a HEAD's length
    with no body, a chunked body with a trailer, 204, 304, a 100 before a 200): splice
    frames each from the one buffer, then the next shed's answer follows."""
    answers = [
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\none",
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n",  # the HEAD
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3\r\ntwo\r\n0\r\nX-Trailer: t\r\n\r\n",
        b"HTTP/1.1 204 No Content\r\n\r\n",
        b"HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n",
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nsix",
    ]
    w = world(lambda _: [(0.0, b"".join(answers))], wait_for=6)
    methods = ["GET", "HEAD", "GET", "GET", "GET", "GET"]
    requests = b"".join(
        f"{m} /{i} HTTP/1.1\r\nHost: {EVIL}\r\n\r\n".encode() for i, m in enumerate(methods)
    )
    with w.splice.client() as c:
        c.send(requests + get(ALPHA, "/after"))
        got = [c.read_response(m) for m in methods]
        assert [(r.status, r.body) for r in got] == [
            (200, b"one"),
            (200, b""),
            (200, b"two"),
            (204, b""),
            (304, b""),
            (200, b"six"),
        ]
        assert got[1].header("content-length") == "5" and got[5].interim == [100]
        assert c.read_response().json()["target"] == "/after"
        # the VM's heads reach the client as the VM wrote them (no Connection: close)
        assert all(r.header("connection") is None for r in got)


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\nContent-Length: 4\n\nreal" + FORGED,
        b"HTTP/1.1 103 Early Hints\r\nContent-Length: 0\r\n\r\n" + REAL,
    ],
    ids=["bare-LFs", "a-1xx-with-a-length"],
)
def test_an_answer_that_cannot_be_framed_gets_502_and_none_of_its_bytes(
    world: Callable[..., World], answer: bytes
) -> None:
    """Bare LFs: no framing to trust, so nothing after the head could be told from a
    forged answer. A 1xx has no length (RFC 9110 §8.6): nginx takes one that says
    ``Content-Length: 0`` for the final answer, and the real final answer would then
    answer its next request, maybe for another shed. The request gets 502
    BAD_RESPONSE; the next shed is never dialled."""
    w = world(lambda _: [(0.0, answer)])
    with w.splice.client() as c:
        c.send(get(EVIL) + get(ALPHA))
        assert_shed_error(c.read_response(), 502, "BAD_RESPONSE")
        assert c.closed_by_peer()
    assert w.alpha.accepted == 0
    assert outcome(w.splice) == "BAD_RESPONSE"


def test_a_broken_chunk_ends_the_answer_and_the_connection_there(
    world: Callable[..., World],
) -> None:
    w = world(lambda _: [(0.0, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                               b"3\r\nabc\r\nzz\r\n" + FORGED)])  # fmt: skip
    with w.splice.client() as c:
        c.send(get(EVIL) + get(ALPHA))
        status, _, _ = c.read_head()
        assert status == 200
        # the good chunk passes if it came in a read of its own; nothing after it does
        assert c.read_to_eof() in (b"", b"3\r\nabc\r\n")
    assert w.alpha.accepted == 0
    assert outcome(w.splice) == "BAD_RESPONSE"


def test_a_body_that_runs_to_the_vms_close_ends_the_connection_before_another_shed(
    world: Callable[..., World],
) -> None:
    """No length, no chunks: the body is whatever comes until the VM closes. The next
    shed's answer would join that body on the client's side, so the connection ends."""
    w = world(lambda _: [(0.0, b"HTTP/1.1 200 OK\r\n\r\nto the end")], close_after=True)
    with w.splice.client() as c:
        c.send(get(EVIL) + get(ALPHA))
        status, _, _ = c.read_head()
        assert status == 200
        assert c.read_to_eof() == b"to the end"
    assert w.alpha.accepted == 0
    assert outcome(w.splice) == "RETIRE_UNFRAMED"


def test_a_vm_closing_with_an_answer_owed_ends_the_connection_before_another_shed(
    world: Callable[..., World],
) -> None:
    """Two requests to evil, one to alpha, pipelined; evil answers the first and closes.
    alpha's answer would pass for evil's second: the connection ends instead."""
    w = world(lambda _: [(0.0, REAL)], wait_for=2, close_after=True)
    with w.splice.client() as c:
        c.send(get(EVIL, "/1") + get(EVIL, "/2") + get(ALPHA))
        assert c.read_response().body == b"real"
        assert c.read_to_eof() == b""
    assert w.alpha.accepted == 0


@pytest.mark.parametrize("reset", [False, True], ids=["fin", "reset"])
def test_a_vm_ending_an_idle_connection_leaves_the_clients_open(
    world: Callable[..., World], reset: bool
) -> None:
    """A VM closes its side of a keep-alive connection that owes nothing (its own idle
    timeout). Framed, splice knows nothing is lost: it drops that VM and keeps the
    front's connection, whose next requests (another shed's, the same shed's on a new
    VM connection) are answered. Passed on, the close would end the front's pooled
    connection under a request it may have on its way."""
    w = world(lambda _: [(0.0, REAL)], close_after=True, reset=reset)
    with w.splice.client() as c:
        c.send(get(EVIL))
        assert c.read_response().body == b"real"
        w.vm.wait_done(0)
        time.sleep(0.2)  # the close has reached splice
        c.send(get(ALPHA, "/after"))
        assert c.read_response().json()["target"] == "/after"
        c.send(get(EVIL))
        assert c.read_response().body == b"real"
    assert w.vm.accepted == 2
    assert outcome(w.splice) == "OK"


@pytest.mark.parametrize(
    ("answer", "close_field"),
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\nConnection: close\r\n\r\nreal", ""),
        (b"HTTP/1.0 200 OK\r\nContent-Length: 4\r\n\r\nreal", ""),
        (REAL, "Connection: close\r\n"),
    ],
    ids=["the-answer-said-close", "an-http-1.0-answer", "the-request-said-close"],
)
def test_a_vm_close_that_was_announced_ends_the_clients(
    world: Callable[..., World], answer: bytes, close_field: str
) -> None:
    """When the answer said the connection ends (or the request asked it to), the VM's
    close is that end, and the client waits for it: it passes on."""
    w = world(lambda _: [(0.0, answer)], close_after=True)
    with w.splice.client() as c:
        c.send(f"GET / HTTP/1.1\r\nHost: {EVIL}\r\n{close_field}\r\n".encode())
        assert c.read_response().body == b"real"
        assert c.closed_by_peer()


def test_blind_a_vm_ending_its_connection_ends_the_clients(world: Callable[..., World]) -> None:
    """Relayed blind (``frame_responses = "fronts"``, a client that is no front), splice
    cannot tell whether the VM's close cut an answer: the client sees it, as before."""
    w = world(lambda _: [(0.0, REAL)], close_after=True, front=False, frame_responses="fronts")
    with w.splice.client() as c:
        c.send(get(EVIL))
        assert c.read_response().body == b"real"
        assert c.closed_by_peer()


def test_a_vm_ending_its_connection_while_the_front_waits_ends_the_clients(
    world: Callable[..., World],
) -> None:
    """With a request sent and its answer owed, the VM's close is not an idle one: the
    client's connection ends (the front retries on a new one) and nothing else answers."""
    w = world(lambda _: [], close_after=True)
    with w.splice.client() as c:
        c.send(get(EVIL))
        assert c.read_to_eof() == b""
    assert w.alpha.accepted == 0


@pytest.mark.parametrize(
    "pipelined", [False, True], ids=["a-plain-request", "before-the-upgrade-request"]
)
def test_a_101_to_a_request_that_asked_for_no_upgrade_gets_502(
    world: Callable[..., World], pipelined: bool
) -> None:
    """Taken as a tunnel, a 101 to a plain GET would send the client's next requests,
    for any host, to this VM unrouted (http.client reuses the connection after it)."""
    w = world(lambda _: [(0.0, b"HTTP/1.1 101 Switching Protocols\r\n\r\n" + FORGED)])
    upgrade = f"GET /ws HTTP/1.1\r\nHost: {EVIL}\r\nConnection: Upgrade\r\nUpgrade: x\r\n\r\n"
    with w.splice.client() as c:
        c.send(get(EVIL) + (upgrade.encode() if pipelined else b""))
        assert_shed_error(c.read_response(), 502, "BAD_RESPONSE")
        assert c.closed_by_peer()
    assert outcome(w.splice) == "BAD_RESPONSE"


def test_another_target_while_a_final_answer_follows_a_1xx_ends_the_connection(
    world: Callable[..., World],
) -> None:
    """nginx takes a 103 to a HEAD for the final answer and sends its next request, for
    another shed. The VM's real final answer, coming later, must not answer that one."""
    w = world(lambda _: [(0.0, b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"), (0.4, FORGED)])
    with w.splice.client() as c:
        c.send(f"HEAD / HTTP/1.1\r\nHost: {EVIL}\r\n\r\n".encode())
        assert c.read_head()[0] == 103
        c.send(get(ALPHA))
        assert c.read_to_eof() == b""
    assert w.alpha.accepted == 0
    assert outcome(w.splice) == "RETIRE_UNFRAMED"


@pytest.mark.parametrize("answers", [False, True], ids=["closes-unanswered", "answers"])
def test_an_error_page_follows_only_the_answers_owed_before_it(
    world: Callable[..., World], answers: bool
) -> None:
    """The client pipelines a request to evil and one splice refuses (no such shed). The
    page answers the second request: after evil's answer, never in place of it."""
    w = world(lambda _: [(0.0, REAL)] if answers else [], close_after=True)
    with w.splice.client() as c:
        c.send(get(EVIL) + get(f"nosuch.{DOMAIN}"))
        if answers:
            assert c.read_response().body == b"real"
            assert_shed_error(c.read_response(), 404, "SHED_NOT_FOUND")
            assert c.closed_by_peer()
        else:
            assert c.read_to_eof() == b""


def test_a_chunk_size_past_a_64_bit_count_ends_the_answer(world: Callable[..., World]) -> None:
    """``FFFFFFFFFFFFFFFF`` (2**64 - 1) overflowed the compiled copy loop's count."""
    head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    w = world(lambda _: [(0.0, head), (0.1, b"FFFFFFFFFFFFFFFF\r\nabc")])
    with w.splice.client() as c:
        c.send(get(EVIL))
        assert c.read_head()[0] == 200
        assert c.read_to_eof() == b""
    assert outcome(w.splice) == "BAD_RESPONSE"


def test_a_declined_upgrade_is_framed_and_the_connection_goes_on(
    world: Callable[..., World],
) -> None:
    w = world(lambda _: [(0.0, b"HTTP/1.1 426 Upgrade Required\r\nContent-Length: 2\r\n\r\nno")])
    upgrade = f"GET /ws HTTP/1.1\r\nHost: {EVIL}\r\nConnection: Upgrade\r\nUpgrade: foo\r\n\r\n"
    with w.splice.client() as c:
        c.send(upgrade.encode())
        assert c.read_response().body == b"no"
        c.send(get(ALPHA, "/next"))
        assert c.read_response().json()["target"] == "/next"


# -- who gets framing ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("settings", "framed"),
    [
        ({"trusted_fronts": []}, True),  # everyone, by default
        ({"frame_responses": "fronts"}, True),  # the front
        ({"trusted_fronts": ["127.0.0.2/32"], "frame_responses": "fronts"}, False),
        ({"route_each_request": False}, False),
    ],
    ids=["default", "fronts-a-front", "fronts-not-a-front", "first-request-only"],
)
def test_framing_goes_to_everyone_by_default_and_to_fronts_only_with_fronts(
    world: Callable[..., World], settings: dict[str, object], framed: bool
) -> None:
    """Unframed (``frame_responses = "fronts"`` for a client that is not a front, and
    ``route_each_request = false``), the bytes a VM sends unasked reach the client."""
    w = world(lambda _: [(0.0, REAL), (0.2, FORGED)], **settings)
    with w.splice.client() as c:
        c.send(get(EVIL))
        assert c.read_response().body == b"real"
        if framed:
            assert c.read_to_eof() == b""
        else:
            assert c.read_response().body == b"forged"


def test_frame_responses_takes_only_its_values(tmp_path: Path) -> None:
    conf = tmp_path / "splice.toml"
    base = 'domains = ["shed.test"]\n[[listen]]\naddress = "127.0.0.1:8081"\n'
    conf.write_text('frame_responses = "some"\n' + base)
    with pytest.raises(ConfigError, match="frame_responses"):
        load_config(str(conf))
    conf.write_text('frame_responses = "fronts"\n' + base)
    assert load_config(str(conf)).frame_responses == "fronts"
    conf.write_text(base)
    assert load_config(str(conf)).frame_responses == "all"
