"""CONNECT tunnel load for a forward proxy: new tunnels per second, bounded.

Each of ``--conns`` workers loops: TCP connect to the proxy, ``CONNECT dest HTTP/1.1``,
read the proxy's 2xx head, then a small plain exchange through the tunnel
(``GET /small`` with ``Connection: close``, read to EOF), drop. ``tunnel`` time is
TCP connect through the proxy's 2xx; ``total`` adds the exchange. asyncio Protocols
(not streams) so the client is not the first thing to saturate. Prints one JSON line.

    python -m bench.connect_load --port 8888 --dest origin.test:8080 --conns 16 --duration 5
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any, cast

from bench.loadutil import check_loopback, latency_summary, run_main


class Tunnel(asyncio.Protocol):
    """One connection: CONNECT, wait for 2xx, send the request, read to EOF."""

    def __init__(self, connect: bytes, request: bytes, want: int) -> None:
        self.connect = connect
        self.request = request
        self.want = want  # bytes of the inner response at least (head + body)
        self.buf = bytearray()
        self.inner = 0
        self.established = False
        self.t_tunnel = 0
        self.transport: asyncio.Transport | None = None
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.transport.write(self.connect)

    def data_received(self, data: bytes) -> None:
        if self.established:
            if not self.inner:
                self.buf += data[:16]
            self.inner += len(data)
            return
        self.buf += data
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            if len(self.buf) > 8192:
                self._fail(f"no CONNECT answer head in {len(self.buf)} bytes")
            return
        if not (self.buf.startswith(b"HTTP/1.1 2") or self.buf.startswith(b"HTTP/1.0 2")):
            self._fail(f"CONNECT refused: {bytes(self.buf[:60])!r}")
            return
        self.established = True
        self.t_tunnel = time.perf_counter_ns()
        rest = bytes(self.buf[end + 4 :])
        self.buf = bytearray()
        assert self.transport is not None
        self.transport.write(self.request)
        if rest:
            self.data_received(rest)

    def eof_received(self) -> bool:
        if not self.established:
            self._fail("EOF before the CONNECT answer")
        elif not self.buf.startswith(b"HTTP/1.1 200") or self.inner < self.want:
            self._fail(f"bad inner answer ({self.inner} bytes): {bytes(self.buf)!r}")
        elif not self.done.done():
            self.done.set_result(None)
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self._fail(f"connection lost: {exc!r}")

    def _fail(self, why: str) -> None:
        if not self.done.done():
            self.done.set_exception(RuntimeError(why))
        if self.transport is not None:
            self.transport.abort()


async def main_async(a: argparse.Namespace) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    connect = f"CONNECT {a.dest} HTTP/1.1\r\nHost: {a.dest}\r\n\r\n".encode()
    request = f"GET {a.path} HTTP/1.1\r\nHost: {a.dest}\r\nConnection: close\r\n\r\n".encode()
    start = time.perf_counter_ns()
    t_measure = start + int(a.warmup * 1e9)
    t_end = t_measure + int(a.duration * 1e9)
    tunnel: list[int] = []
    total: list[int] = []
    errors: list[str] = []
    done = 0

    async def worker() -> None:
        nonlocal done
        while time.perf_counter_ns() < t_end and done < a.max_conns:
            t0 = time.perf_counter_ns()
            proto: Tunnel | None = None
            try:
                _, tun = await asyncio.wait_for(
                    loop.create_connection(
                        lambda: Tunnel(connect, request, a.min_bytes), a.host, a.port
                    ),
                    10,
                )
                proto = tun
                await asyncio.wait_for(tun.done, 10)
                t2 = time.perf_counter_ns()
                done += 1
                if t0 >= t_measure and t2 <= t_end:
                    tunnel.append(tun.t_tunnel - t0)
                    total.append(t2 - t0)
            except (OSError, TimeoutError, RuntimeError) as e:
                errors.append(repr(e))
                if len(errors) > 1000:
                    return
                await asyncio.sleep(0.01)
            finally:
                if proto is not None and proto.transport is not None:
                    proto.transport.abort()

    await asyncio.gather(*(worker() for _ in range(a.conns)))
    measured = (min(time.perf_counter_ns(), t_end) - t_measure) / 1e9
    return {
        "conns": a.conns,
        "done": len(tunnel),
        "seconds": measured,
        "tunnels_per_s": len(tunnel) / measured if measured > 0 else None,
        **latency_summary(tunnel, "tunnel_"),
        **latency_summary(total, "total_"),
        "errors": len(errors),
        "error_samples": errors[:5],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True, help="the proxy")
    ap.add_argument("--dest", required=True, help="host:port to CONNECT to")
    ap.add_argument("--path", default="/small")
    ap.add_argument("--min-bytes", type=int, default=1024, help="inner answer at least")
    ap.add_argument("--conns", type=int, default=16)
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--warmup", type=float, default=0.5)
    ap.add_argument("--max-conns", type=int, default=10_000_000)
    a = ap.parse_args()
    check_loopback(a.host)
    run_main(main_async(a))


if __name__ == "__main__":
    main()
