"""TLS new-connection load: full handshakes (no resumption) + one GET each, bounded.

Each of ``--conns`` workers loops: connect, handshake with SNI, ``GET /small`` with
``Connection: close``, read to EOF, drop. Handshake time is TCP connect through
the TLS Finished; ``total`` adds the request. Prints one JSON line.

    python -m bench.tls_load --port 8443 --sni alpha.bench.test --conns 16 --duration 5
"""

from __future__ import annotations

import argparse
import asyncio
import ssl
import time
from typing import Any

from bench.loadutil import check_loopback, latency_summary, run_main


async def main_async(a: argparse.Namespace) -> dict[str, Any]:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # self-signed backend; we time the handshake, not PKI
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if a.tls12:
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    request = (f"GET {a.path} HTTP/1.1\r\nHost: {a.sni}\r\nConnection: close\r\n\r\n").encode()
    start = time.perf_counter_ns()
    t_measure = start + int(a.warmup * 1e9)
    t_end = t_measure + int(a.duration * 1e9)
    hs: list[int] = []
    total: list[int] = []
    errors: list[str] = []
    done = 0

    async def worker() -> None:
        nonlocal done
        while time.perf_counter_ns() < t_end and done < a.max_conns:
            t0 = time.perf_counter_ns()
            writer = None
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection(a.host, a.port, ssl=ctx, server_hostname=a.sni), 10
                )
                t1 = time.perf_counter_ns()
                writer.write(request)
                body = await asyncio.wait_for(reader.read(-1), 10)
                t2 = time.perf_counter_ns()
                if not body.startswith(b"HTTP/1.1 200"):
                    raise RuntimeError(f"bad response {body[:40]!r}")
                done += 1
                if t0 >= t_measure:
                    hs.append(t1 - t0)
                    total.append(t2 - t0)
            except (OSError, TimeoutError, RuntimeError, ssl.SSLError) as e:
                errors.append(repr(e))
                if len(errors) > 1000:
                    return
                await asyncio.sleep(0.01)
            finally:
                if writer is not None:
                    writer.transport.abort()

    await asyncio.gather(*(worker() for _ in range(a.conns)))
    measured = (min(time.perf_counter_ns(), t_end) - t_measure) / 1e9
    return {
        "conns": a.conns,
        "done": len(hs),
        "seconds": measured,
        "conns_per_s": len(hs) / measured if measured > 0 else None,
        **latency_summary(hs, "hs_"),
        **latency_summary(total, "total_"),
        "errors": len(errors),
        "error_samples": errors[:5],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--sni", default="alpha.bench.test")
    ap.add_argument("--path", default="/small")
    ap.add_argument("--conns", type=int, default=16)
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--warmup", type=float, default=0.5)
    ap.add_argument("--max-conns", type=int, default=10_000_000)
    ap.add_argument("--tls12", action="store_true", help="cap at TLS 1.2")
    a = ap.parse_args()
    check_loopback(a.host)
    run_main(main_async(a))


if __name__ == "__main__":
    main()
