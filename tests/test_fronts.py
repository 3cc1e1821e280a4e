"""Issue 4: correct routing on connections a front proxy reuses for many sheds.

A front (Caddy, nginx) keeps a pool of keep-alive connections to splice and sends
requests for different sheds down the same one; splice must route every request
on its own. Each test drives a real front on loopback with a keep-alive client and
checks that every answer came from the VM its Host named, and, from splice's
access log (one line per client connection), that the front did reuse connections.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from front_peers import DOMAIN, Client, Front, NamedVM, Splice, sha256_hex

pytestmark = pytest.mark.peer

SHEDS = ("alpha", "beta")
FRONTS = ("caddy", "nginx")
#: requests in the alternating runs
REQUESTS = 500
MIB = 1 << 20


@pytest.fixture
def vms() -> Iterator[dict[str, NamedVM]]:
    made = {name: NamedVM(name) for name in SHEDS}
    yield made
    for vm in made.values():
        vm.close()
    for vm in made.values():
        assert not vm.problems, f"VM {vm.name} saw bad requests: {vm.problems[:5]}"


@pytest.fixture
def splice(tmp_path: Path, vms: dict[str, NamedVM]) -> Iterator[Splice]:
    proc = Splice(tmp_path, {name: vm.port for name, vm in vms.items()})
    yield proc
    status = proc.stop()
    assert "Traceback" not in proc.stderr, proc.stderr[-4000:]
    assert status == 0, f"splice exited with {status}:\n{proc.stderr[-4000:]}"


@pytest.fixture(params=FRONTS)
def front(request: pytest.FixtureRequest, tmp_path: Path, splice: Splice) -> Iterator[Front]:
    proc = Front(request.param, tmp_path, splice.port)
    yield proc
    proc.stop()


def _connections_after_stop(front: Front, splice: Splice) -> list[str]:
    """Stop the front (its pooled connections close), then splice: its full access log."""
    front.stop()
    status = splice.stop()
    assert status == 0, f"splice exited with {status}:\n{splice.stderr[-4000:]}"
    return splice.access_lines()


def _assert_reused(lines: list[str], requests: int, front: Front) -> None:
    # a line per connection and per run of requests to one shed on it: the client
    # address tells the connections apart
    conns = len({line.split()[1] for line in lines})
    assert 0 < conns < requests, (
        f"{front.kind}: {conns} connections to splice for {requests} requests "
        f"(ratio {conns / requests:.3f}); the front did not reuse connections"
    )
    bad = [line for line in lines if not line.endswith(" OK")]
    assert not bad, f"{front.kind}: connections that did not end OK: {bad[:5]}"
    # each line is one shed's: its Host and its shed agree, whatever the front pooled.
    # A connection that carried nothing is no route: Caddy (Go's transport) dials a new
    # connection when every pooled one is busy and may then not need it
    unused = " host=- shed=- port=- up=0 down=0 "
    mixed = [
        line
        for line in lines
        if unused not in line and f" shed={line.split(' host=')[1].split('.')[0]} " not in line
    ]
    assert not mixed, f"{front.kind}: lines whose shed is not their Host's: {mixed[:5]}"


def _assert_answer(answer: dict[str, object], shed: str, i: int, front: Front) -> None:
    assert answer["name"] == shed, f"{front.kind}: request {i} for {shed} answered by {answer}"
    assert answer["host"] == f"{shed}.{DOMAIN}", f"request {i}: the VM saw Host {answer['host']}"


def test_alternating_requests_through_a_front_all_reach_the_vm_their_host_names(
    front: Front, splice: Splice, vms: dict[str, NamedVM]
) -> None:
    client = Client(front.port)
    try:
        for i in range(REQUESTS):
            shed = SHEDS[i % 2]
            _assert_answer(client.request(shed), shed, i, front)
    finally:
        client.close()
    lines = _connections_after_stop(front, splice)
    _assert_reused(lines, REQUESTS, front)
    assert sum(vm.requests for vm in vms.values()) == REQUESTS
    assert vms["alpha"].requests == vms["beta"].requests == REQUESTS // 2


def test_post_bodies_interleaved_with_gets_through_a_front_reach_the_right_vm_intact(
    front: Front, splice: Splice, vms: dict[str, NamedVM]
) -> None:
    rng = random.Random(4)
    big = rng.randbytes(MIB)
    # (body, sent chunked): 0 B, 1 B and 1 MiB with Content-Length, and 1 MiB chunked
    bodies = [(b"", False), (b"\x00", False), (big, False), (big[::-1], True)]
    plan: list[tuple[str, bytes | None, bool]] = []
    for _round in range(2):
        for payload, chunked in bodies:
            for shed in SHEDS:
                other = SHEDS[1] if shed == SHEDS[0] else SHEDS[0]
                plan += [(shed, None, False), (other, payload, chunked), (other, None, False)]
    client = Client(front.port)
    try:
        for i, (shed, body, chunked) in enumerate(plan):
            if body is None:
                answer = client.request(shed)
                assert answer["method"] == "GET"
            else:
                answer = client.request(shed, "POST", body, chunked=chunked)
                got = (answer["method"], answer["body_len"], answer["body_sha256"])
                want = ("POST", len(body), sha256_hex(body))
                how = "chunked" if chunked else "Content-Length"
                assert got == want, f"{front.kind}: request {i}: {len(body)} B {how} POST to {shed}"
            _assert_answer(answer, shed, i, front)
    finally:
        client.close()
    lines = _connections_after_stop(front, splice)
    _assert_reused(lines, len(plan), front)
    requests = sum(vm.requests for vm in vms.values())
    assert requests == len(plan), f"the VMs answered {requests} requests, sent {len(plan)}"


def test_concurrent_clients_through_a_front_each_reach_the_vm_their_host_names(
    front: Front, splice: Splice, vms: dict[str, NamedVM]
) -> None:
    """Several clients at once: the front spreads them over several pooled connections."""
    workers, per_worker = 4, 100
    errors: list[str] = []

    def work(w: int) -> None:
        rng = random.Random(w)
        client = Client(front.port)
        try:
            for i in range(per_worker):
                shed = rng.choice(SHEDS)
                body = rng.randbytes(rng.randrange(0, 4096)) if i % 3 == 0 else None
                answer = client.request(shed, "POST" if body is not None else "GET", body)
                if answer["name"] != shed or answer["host"] != f"{shed}.{DOMAIN}":
                    errors.append(f"worker {w} request {i} for {shed}: {answer}")
                if body is not None and answer["body_sha256"] != sha256_hex(body):
                    errors.append(f"worker {w} request {i}: body hash differs")
        except Exception as e:
            errors.append(f"worker {w}: {e!r}")
        finally:
            client.close()

    threads = [threading.Thread(target=work, args=(w,), name=f"client-{w}") for w in range(workers)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 30.0
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    assert not any(t.is_alive() for t in threads), "a client thread hung"
    assert not errors, f"{front.kind}: {len(errors)} wrong answers: {errors[:5]}"
    lines = _connections_after_stop(front, splice)
    _assert_reused(lines, workers * per_worker, front)


@pytest.mark.parametrize("kind", FRONTS)
def test_a_vm_ending_idle_connections_leaves_the_fronts_pooled_ones_open(
    kind: str, tmp_path: Path
) -> None:
    """The VM's keep-alive timeout (0.3 s here) ends its connection between the front's
    requests. splice frames the front's connections and knows nothing was owed: it drops
    the VM's and keeps the front's, so all the requests travel on one pooled connection
    to splice (each on a new VM connection). Passing the VM's close on would end the
    front's connection each time, and a request the front sent at that moment would be
    lost."""
    vm = NamedVM("alpha", idle_timeout=0.3)
    splice = Splice(tmp_path, {"alpha": vm.port})
    front = Front(kind, tmp_path, splice.port)
    client = Client(front.port)
    try:
        for i in range(3):
            if i:
                time.sleep(0.8)  # the VM has closed its idle connection
            _assert_answer(client.request("alpha"), "alpha", i, front)
    finally:
        client.close()
        lines = _connections_after_stop(front, splice)
        vm.close()
    assert vm.connections == 3 and not vm.problems
    assert len({line.split()[1] for line in lines}) == 1, lines
    assert all(line.endswith(" OK") for line in lines), lines
