"""Hostile input at the socket level (issue 7): garbage heads and hellos, slowloris.

A thousand connections (seeded, so a failure replays) send random bytes, truncated
heads and hellos, control characters, huge header lines, smuggling attempts and
mutated ClientHellos to an HTTP and a TLS passthrough listener, ending with a FIN,
a close or a reset; a few send a valid head or hello one byte at a time. None may
hang, splice must log no traceback, a normal request must still work and the socket
count must come back to where it was. Then 500 slowloris connections trickle heads
while normal clients are served; each slow one gets 408 after ``head_timeout``.
"""

from __future__ import annotations

import random
import socket
import ssl
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from hardening_peers import (
    DOMAIN,
    Client,
    Fleet,
    Splice,
    config,
    read_to_end,
    rst_close,
    shed_at,
    status_of,
)
from tls_peers import client_hello
from upstreams import EchoApp, get

ALPHA = f"alpha.{DOMAIN}"
SEED = 7_2026
CONNECTIONS = 1000
#: connections sending a valid head or hello one byte at a time
BYTEWISE = 6
SLOWLORIS = 500
HEAD_TIMEOUT = 2.0


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    f = Fleet(tmp_path)
    yield f
    errors = f.close()
    assert not errors, errors


def _hellos() -> list[bytes]:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    names = [
        ALPHA,
        f"nosuch.{DOMAIN}",
        "evil.example",
        None,
        "a" * 63 + "." + "b" * 63 + f".{DOMAIN}",
    ]
    return [client_hello(ctx, name) for name in names]


def _valid_heads(rng: random.Random) -> list[bytes]:
    body = rng.randbytes(rng.randint(0, 300))
    return [
        get(ALPHA, "/x?y=1", "User-Agent: fuzz\r\nAccept: */*\r\n"),
        f"POST /p HTTP/1.1\r\nHost: {ALPHA}\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body,
        f"POST /c HTTP/1.1\r\nHost: {ALPHA}\r\nTransfer-Encoding: chunked\r\n\r\n"
        f"{len(body):x}\r\n".encode()
        + body
        + b"\r\n0\r\n\r\n",
        get(f"nosuch.{DOMAIN}"),
        get(ALPHA, f"http://{ALPHA}/abs"),
    ]


_SMUGGLING = [
    f"POST / HTTP/1.1\r\nHost: {ALPHA}\r\nContent-Length: 5\r\n"
    "Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    f"POST / HTTP/1.1\r\nHost: {ALPHA}\r\nTransfer-Encoding: chunked, identity\r\n\r\n",
    f"POST / HTTP/1.1\r\nHost: {ALPHA}\r\nContent-Length: 1, 2\r\n\r\nab",
    f"POST / HTTP/1.1\r\nHost: {ALPHA}\r\nContent-Length: -1\r\n\r\n",
    f"POST / HTTP/1.1\r\nHost: {ALPHA}\r\nContent-Length: 99999999999999999999999\r\n\r\n",
    f"POST / HTTP/1.1\r\nHost: {ALPHA}\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    f"POST / HTTP/1.1\r\nHost: {ALPHA}\r\nTransfer-Encoding: chunked\r\n\r\n{'f' * 40}\r\n",
    f"GET / HTTP/1.1\r\nHost: {ALPHA}\r\nX: a\r\n folded\r\n\r\n",
    f"GET / HTTP/1.1\r\nHost: {ALPHA}\r\n\nX: bare-lf\r\n\r\n",
    f"GET / HTTP/1.1\r\nHost : {ALPHA}\r\n\r\n",
    f"GET /\x00 HTTP/1.1\r\nHost: {ALPHA}\r\n\r\n",
    f"GET / HTTP/9.9\r\nHost: {ALPHA}\r\n\r\n",
    f"G\xc3\x89T / HTTP/1.1\r\nHost: {ALPHA}\r\n\r\n",
    f"GET  /  HTTP/1.1\r\nHost: {ALPHA}\r\n\r\n",
    "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    f"CONNECT {ALPHA}:443 HTTP/1.1\r\nHost: {ALPHA}:443\r\n\r\n",
]


def _case(rng: random.Random, hellos: list[bytes]) -> tuple[str, int, bytes]:
    """(kind, listener index, bytes to send)."""
    heads = _valid_heads(rng)
    k = rng.randrange(12)
    if k == 0:
        return "random", 0, rng.randbytes(rng.randint(1, 4096))
    if k == 1:
        head = rng.choice(heads)
        return "truncated head", 0, head[: rng.randint(1, len(head) - 1)]
    if k == 2:
        noisy = bytearray(rng.choice(heads))
        for _ in range(rng.randint(1, 3)):
            bad = rng.choice([*range(0, 9), *range(10, 32), 127, 0x80, 0xFF])
            noisy.insert(rng.randint(0, len(noisy) - 4), bad)
        return "control chars", 0, bytes(noisy)
    if k == 3:
        size = rng.choice([70_000, 100_000, 300_000])
        return (
            "huge line",
            0,
            f"GET / HTTP/1.1\r\nHost: {ALPHA}\r\nX-Big: ".encode() + (b"b" * size + b"\r\n\r\n"),
        )
    if k == 4:
        lines = b"".join(b"X-%d: v\r\n" % i for i in range(rng.choice([500, 3000, 10000])))
        return "many headers", 0, get(ALPHA).replace(b"\r\n\r\n", b"\r\n" + lines + b"\r\n")
    if k == 5:
        return "garbage after", 0, rng.choice(heads) + rng.randbytes(rng.randint(1, 2000))
    if k == 6:
        return "smuggling", 0, rng.choice(_SMUGGLING).encode("latin-1")
    if k == 7:
        return "hello to http", 0, rng.choice(hellos)
    if k == 8:
        return "random", 1, rng.randbytes(rng.randint(1, 4096))
    if k == 9:
        hello = rng.choice(hellos)
        return "truncated hello", 1, hello[: rng.randint(1, len(hello) - 1)]
    if k == 10:
        mutated = bytearray(rng.choice(hellos))
        for _ in range(rng.randint(1, 4)):
            mutated[rng.randrange(len(mutated))] = rng.randrange(256)
        return "mutated hello", 1, bytes(mutated)
    return "http to tls", 1, rng.choice(heads)


def _run_case(s: Splice, kind: str, index: int, payload: bytes, ending: str) -> str:
    """Send one hostile payload; how the connection ended ("timeout" means a hang)."""
    with s.client(index, timeout=10.0) as c:
        try:
            c.sock.sendall(payload)
        except OSError:
            return "reset while sending"
        if ending == "close":
            return "closed by us"
        if ending == "rst":
            rst_close(c.sock)
            return "reset by us"
        try:
            c.sock.shutdown(socket.SHUT_WR)
        except OSError:
            return "reset while sending"
        data, how = read_to_end(c.sock, timeout=10.0)
    status = status_of(data)
    if status is not None:
        return f"{how} after {status}"
    if data[:1] == b"\x15":
        return f"{how} after a TLS alert"
    return f"{how} after {len(data)} other bytes" if data else how


def _bytewise(s: Splice, index: int, payload: bytes, ending: str) -> str:
    with s.client(index, timeout=10.0) as c:
        for b in payload:
            c.sock.sendall(bytes([b]))
            time.sleep(0.002)
        if ending == "rst":
            rst_close(c.sock)
            return "reset by us"
        resp = c.read_response()
        return f"bytewise {resp.status}"


def test_a_thousand_hostile_heads_and_hellos_leave_splice_serving_and_leak_nothing(
    fleet: Fleet,
) -> None:
    alpha = fleet.keep(EchoApp("alpha"))
    s = fleet.start(
        config(
            {"alpha": shed_at(alpha, tls_port=alpha.port)},
            listen=[
                {"address": "127.0.0.1:0", "mode": "http"},
                {"address": "127.0.0.1:0", "mode": "tls-passthrough"},
            ],
            head_timeout=5.0,
        )
    )
    with s.client() as c:
        c.send(get(ALPHA))
        assert c.read_response().status == 200
    base = s.baseline_sockets()
    rng = random.Random(SEED)
    hellos = _hellos()
    cases = []
    for _ in range(CONNECTIONS):
        kind, index, payload = _case(rng, hellos)
        cases.append((kind, index, payload, rng.choice(["half", "half", "close", "rst"])))
    bytewise = [(0, get(ALPHA, "/slow"), "read")] * (BYTEWISE // 2) + [(1, hellos[0], "rst")] * (
        BYTEWISE // 2
    )
    t0 = time.monotonic()
    with ThreadPoolExecutor(max_workers=24) as pool:
        slow = [pool.submit(_bytewise, s, *args) for args in bytewise]
        results = list(pool.map(lambda case: _run_case(s, *case), cases))
        slow_results = [f.result(timeout=60.0) for f in slow]
    took = time.monotonic() - t0
    by_kind: Counter[str] = Counter()
    for (kind, _, _, _), result in zip(cases, results, strict=True):
        by_kind[f"{kind}: {result}"] += 1
    hangs = {k: n for k, n in by_kind.items() if "timeout" in k}
    with s.client() as c:
        c.send(get(ALPHA))
        after = c.read_response().status
    end = s.settled_sockets(base)
    figures = (
        f"{CONNECTIONS} hostile connections in {took:.1f} s (seed {SEED}); sockets {base} "
        f"before, {end} after; normal request after: {after}; bytewise: {slow_results}\n"
        + "\n".join(f"  {n:4d} {k}" for k, n in sorted(by_kind.items()))
    )
    print(figures)
    assert not hangs, figures
    assert after == 200, figures
    assert slow_results[: BYTEWISE // 2] == ["bytewise 200"] * (BYTEWISE // 2), figures
    assert end == base, figures
    assert not s.problems(), s.tracebacks()


def test_slowloris_connections_get_408_while_normal_clients_are_still_served(
    fleet: Fleet,
) -> None:
    alpha = fleet.keep(EchoApp("alpha"))
    s = fleet.start(config({"alpha": shed_at(alpha)}, head_timeout=HEAD_TIMEOUT))
    base = s.baseline_sockets()
    prefix = f"GET / HTTP/1.1\r\nHost: {ALPHA}\r\nX-Slow: ".encode()
    normal: Counter[str] = Counter()
    stop = threading.Event()

    def serve_normally() -> None:
        for _ in range(1000):  # bounded; ``stop`` ends it long before
            if stop.is_set():
                return
            try:
                with Client(s.port, timeout=10.0) as c:
                    c.send(get(ALPHA))
                    normal[str(c.read_response().status)] += 1
            except OSError as e:
                normal[repr(e)] += 1
            time.sleep(0.05)

    socks: list[socket.socket] = []
    answers: dict[int, bytes] = {}
    ended: dict[int, str] = {}
    worker = threading.Thread(target=serve_normally)
    try:
        for _ in range(SLOWLORIS):
            sock = socket.create_connection(("127.0.0.1", s.port), timeout=5.0)
            sock.setblocking(False)
            socks.append(sock)
        t0 = time.monotonic()
        worker.start()
        sent = [0] * SLOWLORIS
        while time.monotonic() - t0 < HEAD_TIMEOUT * 3 and len(ended) < SLOWLORIS:
            for i, sock in enumerate(socks):
                if i in ended:
                    continue
                try:
                    data = sock.recv(4096)
                except BlockingIOError:
                    pass
                except OSError as e:
                    ended[i] = type(e).__name__
                    continue
                else:
                    answers[i] = answers.get(i, b"") + data
                    if not data or b"\r\n" in answers[i]:
                        ended[i] = "answered" if answers[i] else "closed"
                    continue
                byte = prefix[sent[i] : sent[i] + 1] or b"a"
                try:
                    sock.send(byte)
                    sent[i] += 1
                except OSError as e:
                    ended[i] = type(e).__name__
            time.sleep(0.2)
        took = time.monotonic() - t0
    finally:
        stop.set()
        if worker.is_alive() or worker.ident is not None:
            worker.join(30.0)
        for sock in socks:
            sock.close()
    statuses = Counter(status_of(answers.get(i, b"")) for i in range(SLOWLORIS))
    end = s.settled_sockets(base)
    figures = (
        f"{SLOWLORIS} slowloris connections over {took:.1f} s: statuses {dict(statuses)}, "
        f"endings {dict(Counter(ended.values()))}; normal clients meanwhile {dict(normal)}; "
        f"sockets {base} before, {end} after"
    )
    print(figures)
    assert statuses[408] == SLOWLORIS, figures
    assert normal["200"] >= 5 and set(normal) == {"200"}, figures
    assert end == base, figures
