"""Soak with integrity and a slow reader (issue 7).

- Soak: 200 concurrent clients for ``SPLICE_SOAK_SECONDS`` (default 60) send random
  requests and get random responses, 0 B to 8 MiB each way, Content-Length or
  chunked, on keep-alive or closing connections, plus WebSocket echo sessions.
  Every body is hashed at both ends: the VM reports the SHA-256 of what it got and
  of what it sends, the client compares with what it sent and what it got. Zero
  mismatches; afterwards splice's socket count is back to its start and its RSS
  within ``RSS_SLACK`` of where it began.
- Slow reader: a client reads a 1 GiB download at 1 MiB/s for 10 s; splice's RSS
  grows by less than 16 MiB (backpressure reaches the VM instead of buffering).

The figures are printed (read them with ``pytest -rA``) and repeated in every
assertion message.
"""

from __future__ import annotations

import hashlib
import os
import random
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hardening_peers import (
    DOMAIN,
    MAX_BODY,
    PATTERN,
    POOL,
    POOL_SIZE,
    Client,
    Fleet,
    SoakServer,
    StreamServer,
    config,
    shed_at,
)
from upstreams import EchoApp, WsClient

SOAK_SECONDS = float(os.environ.get("SPLICE_SOAK_SECONDS", "60"))
CLIENTS = 200
#: how far splice's RSS may end above where it began (pipe pool, allocator slack)
RSS_SLACK_KIB = 64 * 1024
#: the slow reader's pace, duration and download size
SLOW_RATE = 1 << 20
SLOW_SECONDS = 10.0
SLOW_SIZE = 1 << 30
SLOW_RSS_GROWTH_KIB = 16 * 1024
#: the largest WebSocket message of the soak (wsproto in this process is the bottleneck)
WS_MAX = 256 * 1024
#: the timeout of every client socket operation
IO = 60.0


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    f = Fleet(tmp_path)
    yield f
    errors = f.close()
    assert not errors, errors


@dataclass
class Tally:
    requests: int = 0
    ws_messages: int = 0
    connections: int = 0
    bytes_up: int = 0
    bytes_down: int = 0
    mismatches: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, up: int, down: int, ws: bool = False) -> None:
        with self.lock:
            if ws:
                self.ws_messages += 1
            else:
                self.requests += 1
            self.bytes_up += up
            self.bytes_down += down

    def mismatch(self, msg: str) -> None:
        with self.lock:
            self.mismatches.append(msg)

    def error(self, msg: str) -> None:
        with self.lock:
            self.errors.append(msg)


def _size(rng: random.Random) -> int:
    """0 B to 8 MiB, most of them small: 10 % empty, log-uniform otherwise, 3 % the maximum."""
    r = rng.random()
    if r < 0.10:
        return 0
    if r < 0.13:
        return MAX_BODY
    return min(MAX_BODY, int(2 ** rng.uniform(0, 23)))


def _chunks(body: memoryview, rng: random.Random) -> Iterator[bytes | memoryview]:
    pos = 0
    while pos < len(body):
        n = min(len(body) - pos, rng.choice([1, 100, 4096, 65536, 1 << 20]))
        yield b"%x\r\n" % n
        yield body[pos : pos + n]
        yield b"\r\n"
        pos += n
    yield b"0\r\n\r\n"


class SoakClient:
    """One of the concurrent clients: sessions of requests until the deadline."""

    def __init__(self, port: int, seed: int, deadline: float, tally: Tally) -> None:
        self.port = port
        self.rng = random.Random(seed)
        self.deadline = deadline
        self.tally = tally
        self.buf = bytearray(1 << 18)

    def run(self) -> None:
        for _ in range(100_000):  # bounded; the deadline ends it
            if time.monotonic() >= self.deadline:
                return
            try:
                if self.rng.random() < 0.1:
                    self._ws_session()
                else:
                    self._http_session()
            except Exception as e:
                self.tally.error(f"{type(e).__name__}: {e}")
                return

    def _http_session(self) -> None:
        rng = self.rng
        with Client(self.port, timeout=IO) as c:
            with self.tally.lock:
                self.tally.connections += 1
            count = rng.choice([1, 1, 2, 3, 5, 10])
            for i in range(count):
                close = i == count - 1 and rng.random() < 0.5
                self._request(c, close)
                if close or time.monotonic() >= self.deadline:
                    break

    def _request(self, c: Client, close: bool) -> None:
        rng = self.rng
        up, down = _size(rng), _size(rng)
        up_off, down_off = rng.randrange(POOL_SIZE - up + 1), rng.randrange(POOL_SIZE - down + 1)
        body = memoryview(POOL)[up_off : up_off + up]
        chunked = rng.random() < 0.2
        head = f"POST /?down={down}&off={down_off} HTTP/1.1\r\nHost: soak.{DOMAIN}\r\n"
        if close:
            head += "Connection: close\r\n"
        head += "Transfer-Encoding: chunked\r\n\r\n" if chunked else f"Content-Length: {up}\r\n\r\n"
        c.sock.sendall(head.encode())
        if chunked:
            for piece in _chunks(body, rng):
                c.sock.sendall(piece)
        else:
            c.sock.sendall(body)
        status, _, headers = c.read_head()
        fields = dict(headers)
        length = int(fields["content-length"])
        digest = hashlib.sha256()
        got = min(len(c.buf), length)
        digest.update(c.buf[:got])
        del c.buf[:got]
        view = memoryview(self.buf)
        while got < length:
            n = c.sock.recv_into(view, min(len(view), length - got))
            if not n:
                raise ConnectionError(f"response cut at {got} of {length}")
            digest.update(view[:n])
            got += n
        sent_sha = hashlib.sha256(body).hexdigest()
        want_down = hashlib.sha256(memoryview(POOL)[down_off : down_off + down]).hexdigest()
        where = f"up {up} B ({'chunked' if chunked else 'length'}), down {down} B"
        if status != 200:
            self.tally.mismatch(f"status {status}: {where}")
        elif fields.get("x-up-len") != str(up) or fields.get("x-up-sha256") != sent_sha:
            self.tally.mismatch(f"the VM got other bytes than sent: {where}")
        elif digest.hexdigest() != fields.get("x-down-sha256") or length != down:
            self.tally.mismatch(f"the client got other bytes than the VM sent: {where}")
        elif digest.hexdigest() != want_down:
            self.tally.mismatch(f"the VM sent other bytes than asked: {where}")
        self.tally.add(up, down)
        if close:
            assert c.closed_by_peer(), "Connection: close, but the connection stayed open"

    def _ws_session(self) -> None:
        rng = self.rng
        with Client(self.port, timeout=IO) as c:
            with self.tally.lock:
                self.tally.connections += 1
            ws = WsClient(c, f"ws.{DOMAIN}")
            for _ in range(rng.randint(1, 5)):
                n = rng.choice([0, 1, 125, 126, 65535, 65536, rng.randrange(WS_MAX)])
                off = rng.randrange(POOL_SIZE - n)
                msg = bytes(POOL[off : off + n])
                echo = ws.echo(msg)
                assert isinstance(echo, bytes)
                if hashlib.sha256(echo).digest() != hashlib.sha256(msg).digest():
                    self.tally.mismatch(f"a {n} B WebSocket message came back changed")
                self.tally.add(n, len(echo), ws=True)
            ws.close()


@pytest.mark.slow
def test_200_clients_for_the_soak_duration_get_every_body_intact_and_leak_nothing(
    fleet: Fleet,
) -> None:
    soak = fleet.keep(SoakServer("soak"))
    ws = fleet.keep(EchoApp("ws"))
    s = fleet.start(config({"soak": shed_at(soak), "ws": shed_at(ws)}, head_timeout=30.0))
    kinds_before = s.fds()
    sockets_before, fds_before, rss_before = s.baseline_sockets(), s.fd_total(), s.rss_kib()
    tally = Tally()
    t0 = time.monotonic()
    deadline = t0 + SOAK_SECONDS
    clients = [SoakClient(s.port, 1000 + i, deadline, tally) for i in range(CLIENTS)]
    threads = [threading.Thread(target=c.run, name=f"soak-{i}") for i, c in enumerate(clients)]
    peak_sockets = peak_rss = 0
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads) and time.monotonic() < deadline + 2 * IO:
        peak_sockets = max(peak_sockets, s.sockets())
        peak_rss = max(peak_rss, s.rss_kib())
        time.sleep(0.5)
    for t in threads:
        t.join(IO)
    took = time.monotonic() - t0
    sockets_after = s.settled_sockets(sockets_before, timeout=10.0)
    fds_after, rss_after = s.fd_total(), s.rss_kib()
    fds = s.fds()
    not_pipes = {k: n for k, n in fds.items() if k != "pipe"}
    not_pipes_before = {k: n for k, n in kinds_before.items() if k != "pipe"}
    figures = (
        f"soak: {CLIENTS} clients, {took:.1f} s (SPLICE_SOAK_SECONDS={SOAK_SECONDS:g}): "
        f"{tally.requests} requests + {tally.ws_messages} WebSocket messages on "
        f"{tally.connections} connections, {tally.bytes_up / 2**20:.0f} MiB up, "
        f"{tally.bytes_down / 2**20:.0f} MiB down; mismatches {len(tally.mismatches)}, "
        f"errors {len(tally.errors)}; sockets {sockets_before} before, {peak_sockets} peak, "
        f"{sockets_after} after; fds {fds_before} before, {fds_after} after {dict(fds)}; "
        f"RSS {rss_before} KiB before, {peak_rss} KiB peak, {rss_after} KiB after "
        f"(+{rss_after - rss_before} KiB, bound +{RSS_SLACK_KIB} KiB); "
        f"splice's outcomes {dict(s.outcomes())}"
    )
    print(figures)
    assert not any(t.is_alive() for t in threads), "clients still running: " + figures
    assert not tally.mismatches, figures + "\n" + "\n".join(tally.mismatches[:10])
    assert not tally.errors, figures + "\n" + "\n".join(tally.errors[:10])
    assert tally.requests >= CLIENTS, figures
    assert sockets_after == sockets_before, figures
    # the pipe pool keeps the pipes it made (2 fds each, at most pipe_pool = 256 pipes);
    # every other fd is back to its count
    assert not_pipes == not_pipes_before, figures
    assert fds["pipe"] <= 2 * 256, figures
    assert rss_after - rss_before < RSS_SLACK_KIB, figures


@pytest.mark.slow
def test_a_slow_reader_of_a_huge_download_does_not_grow_splices_memory(fleet: Fleet) -> None:
    stream = fleet.keep(StreamServer("stream"))
    s = fleet.start(config({"stream": shed_at(stream)}))
    with s.client() as warm:  # one short download so pools and buffers exist
        warm.send(f"GET /stream/{4 << 20} HTTP/1.1\r\nHost: stream.{DOMAIN}\r\n\r\n".encode())
        warm.read_response()
    rss_before = s.rss_kib()
    rss_peak = rss_before
    got = 0
    pattern_ok = True
    with s.client(timeout=IO) as c:
        c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 16)
        c.send(f"GET /stream/{SLOW_SIZE} HTTP/1.1\r\nHost: stream.{DOMAIN}\r\n\r\n".encode())
        status, _, _ = c.read_head()
        assert status == 200
        got = len(c.buf)
        c.buf.clear()
        t0 = time.monotonic()
        next_sample = t0
        while (now := time.monotonic()) - t0 < SLOW_SECONDS:
            want = int((now - t0) * SLOW_RATE) - got
            if want > 0:
                data = c.sock.recv(min(want, 1 << 16))
                if not data:
                    break
                start = got % len(PATTERN)
                expect = (PATTERN[start:] + PATTERN)[: len(data)]
                pattern_ok = pattern_ok and data == expect
                got += len(data)
            if now >= next_sample:
                rss_peak = max(rss_peak, s.rss_kib())
                next_sample = now + 0.25
            time.sleep(0.01)
        took = time.monotonic() - t0
        sent = stream.sent.get(1, 0)
    rss_after = s.rss_kib()
    growth = rss_peak - rss_before
    figures = (
        f"slow reader: {got / 2**20:.1f} MiB read in {took:.1f} s of a {SLOW_SIZE >> 20} MiB "
        f"download; the VM had sent {sent / 2**20:.1f} MiB; splice RSS {rss_before} KiB "
        f"before, {rss_peak} KiB peak (+{growth} KiB, bound +{SLOW_RSS_GROWTH_KIB} KiB), "
        f"{rss_after} KiB after"
    )
    print(figures)
    assert pattern_ok, "the stream's bytes changed: " + figures
    assert got >= SLOW_RATE * SLOW_SECONDS * 0.5, figures
    assert growth < SLOW_RSS_GROWTH_KIB, figures
    assert sent < got + (64 << 20), "the VM was not held back: " + figures
