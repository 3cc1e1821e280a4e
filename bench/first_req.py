"""First-request latency through splice's shed-api resolver: cold vs warm cache, and
the shed-server round trip itself. Sequential, one request at a time, blocking sockets.

1. prime: two requests for ``--prime`` (opens the resolver's keep-alive connection to
   shed-server, so no cold name pays a TCP handshake to it);
2. cold: per name in ``--names`` (never looked up before): new TCP connection to splice,
   ``GET /small`` with Host ``NAME.DOMAIN`` and ``Connection: close``, timed from
   connect to the last body byte;
3. warm: the same names again (cached: ttl is long);
4. rtt: ``GET /api/sheds/NAME`` straight to shed-server, on one keep-alive connection
   (what the resolver pays per lookup) and on fresh connections.

``--watch-pid`` (the shed-server process): its read/write syscalls (/proc/PID/io) are
counted over the cold and the warm phase; warm must be 0 ("adds no I/O").

    python -m bench.first_req --port 8080 --shed-port 9000 --names c0,c1 --watch-pid 123
"""

from __future__ import annotations

import argparse
import socket
import time
from pathlib import Path
from typing import Any

from bench.loadutil import check_loopback, latency_summary


def _exchange(sock: socket.socket, request: bytes) -> bytes:
    """Send one request; read one response (Content-Length framed, else to EOF)."""
    sock.sendall(request)
    buf = b""
    need = -1
    while need < 0 or len(buf) < need:
        data = sock.recv(65536)
        if not data:
            if need < 0 and buf:
                return buf  # no Content-Length: EOF ends it
            raise ConnectionError(f"EOF after {len(buf)} bytes (wanted {need})")
        buf += data
        if need < 0:
            end = buf.find(b"\r\n\r\n")
            if end >= 0:
                length = 0
                for line in buf[:end].split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                need = end + 4 + length
    return buf


def _connect(host: str, port: int) -> socket.socket:
    s = socket.create_connection((host, port), timeout=10)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def _first_request(host: str, port: int, name: str, domain: str) -> int:
    """ns from connect to the whole answer; raises unless 200."""
    req = f"GET /small HTTP/1.1\r\nHost: {name}.{domain}\r\nConnection: close\r\n\r\n".encode()
    t0 = time.perf_counter_ns()
    s = _connect(host, port)
    try:
        answer = _exchange(s, req)
    finally:
        s.close()
    t1 = time.perf_counter_ns()
    if not answer.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(f"{name}: {answer[:80]!r}")
    return t1 - t0


def _io(pid: int) -> int:
    """read + write syscalls of a process so far (0 when unreadable)."""
    if not pid:
        return 0
    try:
        fields = dict(line.split(": ") for line in Path(f"/proc/{pid}/io").read_text().splitlines())
    except OSError:
        return 0
    return int(fields["syscr"]) + int(fields["syscw"])


def run(a: argparse.Namespace) -> dict[str, Any]:
    names = [n for n in a.names.split(",") if n]
    errors: list[str] = []

    def phase(label: str) -> list[int]:
        out = []
        for n in names:
            try:
                out.append(_first_request(a.host, a.port, n, a.domain))
            except (OSError, RuntimeError) as e:
                errors.append(f"{label} {e!r}")
        return out

    for _ in range(2):
        _first_request(a.host, a.port, a.prime, a.domain)
    io0 = _io(a.watch_pid)
    cold = phase("cold")
    io1 = _io(a.watch_pid)
    warm = phase("warm")
    io2 = _io(a.watch_pid)

    api = f"GET /api/sheds/{names[0]} HTTP/1.1\r\nHost: 127.0.0.1:{a.shed_port}\r\n\r\n"
    rtt: list[int] = []
    s = _connect(a.host, a.shed_port)
    try:
        _exchange(s, api.encode())  # not timed: the connection's first
        for _ in range(a.rtt_count):
            t0 = time.perf_counter_ns()
            answer = _exchange(s, api.encode())
            rtt.append(time.perf_counter_ns() - t0)
            if not answer.startswith(b"HTTP/1.1 200"):
                errors.append(f"rtt {answer[:80]!r}")
    finally:
        s.close()
    fresh: list[int] = []
    closing = api.replace("\r\n\r\n", "\r\nConnection: close\r\n\r\n").encode()
    for _ in range(max(1, a.rtt_count // 2)):
        t0 = time.perf_counter_ns()
        s = _connect(a.host, a.shed_port)
        try:
            _exchange(s, closing)
        finally:
            s.close()
        fresh.append(time.perf_counter_ns() - t0)

    out: dict[str, Any] = {"names": len(names)}
    out.update(latency_summary(cold, "cold_"))
    out.update(latency_summary(warm, "warm_"))
    out.update(latency_summary(rtt, "rtt_"))
    out.update(latency_summary(fresh, "rtt_fresh_"))
    out["shed_io_cold"] = io1 - io0 if a.watch_pid else None
    out["shed_io_warm"] = io2 - io1 if a.watch_pid else None
    out["errors"] = len(errors)
    out["error_samples"] = errors[:5]
    return out


def main() -> None:
    import json
    import sys

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True, help="splice's HTTP listener")
    ap.add_argument("--shed-port", type=int, required=True, help="shed-server (the fake)")
    ap.add_argument("--domain", default="bench.test")
    ap.add_argument("--names", required=True, help="comma-separated shed names, all uncached")
    ap.add_argument("--prime", default="alpha", help="a shed used before timing starts")
    ap.add_argument("--rtt-count", type=int, default=50)
    ap.add_argument("--watch-pid", type=int, default=0, help="shed-server's PID (/proc/PID/io)")
    a = ap.parse_args()
    check_loopback(a.host)
    sys.stdout.write(json.dumps(run(a)) + "\n")


if __name__ == "__main__":
    main()
