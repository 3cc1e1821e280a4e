"""WebSocket load: N connections each doing 1 KiB echo round trips, bounded in time and count.

One message in flight per connection, so msgs/s and the RTT percentiles show what
the path (proxy) adds per frame. Prints one JSON line:
{"msgs", "seconds", "msgs_per_s", "p50_ms", "p99_ms", "errors", ...}

    python -m bench.ws_load --port 8080 --host-header wsecho.bench.test --conns 64 --duration 5
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import time
from typing import Any, cast

from bench.loadutil import check_loopback, latency_summary, run_main
from bench.ws_echo import frame_header


class Client(asyncio.Protocol):
    """One connection: handshake, then send a frame, await its echo, repeat."""

    def __init__(self, run: Run, size: int) -> None:
        self.run = run
        mask = os.urandom(4)
        payload = os.urandom(size)
        key = (mask * (size // 4 + 1))[:size]
        masked = (int.from_bytes(payload, "little") ^ int.from_bytes(key, "little")).to_bytes(
            size, "little"
        )
        hdr = bytearray(frame_header(0x82, size))
        hdr[1] |= 0x80  # client frames are masked
        self.frame = bytes(hdr) + mask + masked
        self.expect = len(hdr) + size  # server frames are unmasked
        self.expect_payload = payload
        self.buf = bytearray()
        self.open = False
        self.checked = False
        self.sent_at = 0
        self.transport: asyncio.Transport | None = None
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        key = base64.b64encode(os.urandom(16))
        self.transport.write(
            b"GET /ws HTTP/1.1\r\nHost: " + self.run.host_header + b"\r\n"
            b"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
            b"Sec-WebSocket-Key: " + key + b"\r\n\r\n"
        )

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if not self.open:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            if not self.buf.startswith(b"HTTP/1.1 101"):
                self._fail("no 101: " + bytes(self.buf[:40]).decode(errors="replace"))
                return
            del self.buf[: end + 4]
            self.open = True
            self.run.opened += 1
            self._send()
            return
        if len(self.buf) < self.expect:
            return
        now = time.perf_counter_ns()
        if not self.checked:
            if bytes(self.buf[self.expect - len(self.expect_payload) : self.expect]) != (
                self.expect_payload
            ):
                self._fail("echo mismatch")
                return
            self.checked = True
        del self.buf[: self.expect]
        self.run.record(now - self.sent_at, now)
        if self.run.go(now):
            self._send()
        elif not self.done.done():
            self.done.set_result(None)

    def _send(self) -> None:
        assert self.transport is not None
        self.sent_at = time.perf_counter_ns()
        self.transport.write(self.frame)

    def _fail(self, why: str) -> None:
        self.run.errors.append(why)
        if self.transport:
            self.transport.abort()
        if not self.done.done():
            self.done.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.run.errors.append(f"closed early: {exc!r}")
            self.done.set_result(None)


class Run:
    """Shared counters and the stop rule (deadline or message cap)."""

    def __init__(self, host_header: str, duration: float, warmup: float, max_msgs: int) -> None:
        self.host_header = host_header.encode()
        now = time.perf_counter_ns()
        self.t_measure = now + int(warmup * 1e9)
        self.t_end = self.t_measure + int(duration * 1e9)
        self.max_msgs = max_msgs
        self.lat: list[int] = []
        self.total = 0
        self.opened = 0
        self.errors: list[str] = []

    def record(self, rtt: int, now: int) -> None:
        self.total += 1
        if now >= self.t_measure:
            self.lat.append(rtt)

    def go(self, now: int) -> bool:
        return now < self.t_end and self.total < self.max_msgs


async def main_async(a: argparse.Namespace) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    run = Run(a.host_header, a.duration, a.warmup, a.max_msgs)
    clients: list[Client] = []

    async def one() -> None:
        c = Client(run, a.size)
        clients.append(c)
        try:
            await asyncio.wait_for(loop.create_connection(lambda: c, a.host, a.port), 10)
        except (OSError, TimeoutError) as e:
            run.errors.append(f"connect: {e!r}")
            c.done.set_result(None)

    await asyncio.gather(*(one() for _ in range(a.conns)))
    hard = (run.t_end - time.perf_counter_ns()) / 1e9 + 10
    try:
        await asyncio.wait_for(asyncio.gather(*(c.done for c in clients)), max(hard, 1))
    except TimeoutError:
        run.errors.append("stalled past deadline")
    for c in clients:
        if c.transport:
            c.transport.abort()
    measured = (min(time.perf_counter_ns(), run.t_end) - run.t_measure) / 1e9
    return {
        "conns": a.conns,
        "opened": run.opened,
        "size": a.size,
        "msgs": len(run.lat),
        "seconds": measured,
        "msgs_per_s": len(run.lat) / measured if measured > 0 else None,
        **latency_summary(run.lat),
        "errors": len(run.errors),
        "error_samples": run.errors[:5],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--host-header", default="wsecho.bench.test")
    ap.add_argument("--conns", type=int, default=64)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--duration", type=float, default=5.0, help="measured seconds")
    ap.add_argument("--warmup", type=float, default=0.5, help="seconds excluded from stats")
    ap.add_argument("--max-msgs", type=int, default=50_000_000)
    a = ap.parse_args()
    check_loopback(a.host)
    run_main(main_async(a))


if __name__ == "__main__":
    main()
