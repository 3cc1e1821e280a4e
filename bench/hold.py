"""Held-connection client: open N keep-alive connections, do one request each, then idle.

The orchestrator reads the proxy's /proc while they are held. Protocol on stdio:
prints ``ready <ok> <failed>`` once all are open, then holds until a line (or EOF)
on stdin or ``--max-hold`` seconds, then resets them all (SO_LINGER 0, so no
TIME_WAIT pile-up between runs) and prints a JSON summary.

    python -m bench.hold --port 8080 --conns 2000
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import struct
import sys
import threading
import time
from typing import Any, cast

from bench.loadutil import check_loopback, run_main


class Holder(asyncio.Protocol):
    """Send one GET, read one full response (Content-Length), then stay quiet."""

    def __init__(self, request: bytes) -> None:
        self.request = request
        self.buf = bytearray()
        self.need = -1
        self.transport: asyncio.Transport | None = None
        self.answered: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        if self.answered.done():
            return
        self.buf += data
        if self.need < 0:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            length = 0
            for line in bytes(self.buf[:end]).split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            self.need = end + 4 + length
            if not self.buf.startswith(b"HTTP/1.1 200"):
                self.answered.set_result(False)
                return
        if len(self.buf) >= self.need:
            self.buf = bytearray()
            self.answered.set_result(True)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if not self.answered.done():
            self.answered.set_result(False)

    def reset(self) -> None:
        if self.transport is None:
            return
        sock = self.transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            except OSError:
                pass
        self.transport.abort()


async def main_async(a: argparse.Namespace) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    request = (
        f"GET {a.path} HTTP/1.1\r\nHost: {a.host_header}\r\nUser-Agent: splice-bench-hold\r\n\r\n"
    ).encode()
    sem = asyncio.Semaphore(a.parallel)
    holders: list[Holder] = []
    errors: list[str] = []
    t0 = time.monotonic()
    deadline = t0 + a.open_timeout

    async def one() -> bool:
        async with sem:
            h = Holder(request)
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            try:
                await asyncio.wait_for(loop.create_connection(lambda: h, a.host, a.port), left)
                holders.append(h)
                return await asyncio.wait_for(h.answered, max(0.1, deadline - time.monotonic()))
            except (OSError, TimeoutError) as e:
                if len(errors) < 5:
                    errors.append(repr(e))
                return False

    results = await asyncio.gather(*(one() for _ in range(a.conns)))
    ok = sum(results)
    open_s = time.monotonic() - t0
    sys.stdout.write(f"ready {ok} {a.conns - ok}\n")
    sys.stdout.flush()
    release: asyncio.Future[None] = loop.create_future()

    def set_release() -> None:
        if not release.done():
            release.set_result(None)

    def wait_stdin() -> None:  # a daemon thread: never keeps the process alive
        sys.stdin.readline()
        loop.call_soon_threadsafe(set_release)

    threading.Thread(target=wait_stdin, daemon=True).start()
    try:
        await asyncio.wait_for(release, a.max_hold)
    except TimeoutError:
        errors.append("max-hold reached")
    still = sum(1 for h in holders if not h.lost and h.answered.done() and h.answered.result())
    for h in holders:
        h.reset()
    return {"conns": a.conns, "ok": ok, "still_open": still, "open_s": open_s, "errors": errors}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--host-header", default="alpha.bench.test")
    ap.add_argument("--path", default="/small")
    ap.add_argument("--conns", type=int, default=2000)
    ap.add_argument("--parallel", type=int, default=256, help="connections being opened at once")
    ap.add_argument("--open-timeout", type=float, default=60.0)
    ap.add_argument("--max-hold", type=float, default=120.0)
    a = ap.parse_args()
    check_loopback(a.host)
    run_main(main_async(a))


if __name__ == "__main__":
    main()
