"""The store through the real server: record with ``curl -x``, then replay offline."""

from __future__ import annotations

import hashlib
import http.server
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.peer

PAYLOAD = bytes(range(256)) * 4096  # 1 MiB


class Origin(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        body = PAYLOAD if self.path == "/file" else b"small"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Origin", "yes")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def origin() -> Iterator[http.server.ThreadingHTTPServer]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Origin)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    yield server
    server.shutdown()
    server.server_close()


def run_splice(
    tmp: Path, mode: str, origin_port: int, top: str = ""
) -> tuple[subprocess.Popen[bytes], int]:
    """splice with a forward listener and the store in ``mode``; ``top``: more top-level keys."""
    port = free_port()
    cfg = tmp / f"{mode}.toml"
    cfg.write_text(
        f"workers = 1\n{top}"
        f'[[listen]]\naddress = "127.0.0.1:{port}"\nmode = "forward"\n'
        f'[forward]\nports = [{origin_port}]\nhosts = {{ "origin.test" = "127.0.0.1" }}\n'
        f'[forward.store]\npath = "{tmp / "store"}"\nmode = "{mode}"\n'
    )
    p = subprocess.Popen([sys.executable, "-m", "splice", "serve", "-c", str(cfg)],
                         stderr=subprocess.PIPE)  # fmt: skip
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return p, port
        except OSError:
            time.sleep(0.05)
    p.kill()
    raise AssertionError("splice did not start")


def stop(p: subprocess.Popen[bytes]) -> None:
    p.send_signal(signal.SIGTERM)
    try:
        p.wait(10)
    finally:
        if p.poll() is None:
            p.kill()
        assert p.stderr is not None
        p.stderr.close()


def curl(proxy: int, url: str, out: Path) -> tuple[str, str]:
    """(status code, response headers) of ``curl -x``; the body goes to ``out``."""
    r = subprocess.run(
        ["curl", "-s", "-m", "20", "-x", f"http://127.0.0.1:{proxy}", "-D", "-", "-o",
         str(out), "-w", "%{http_code}", url],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    return r.stdout[-3:], r.stdout[:-3]


def test_a_recording_replays_byte_for_byte_with_the_origin_gone(
    tmp_path: Path, origin: http.server.ThreadingHTTPServer
) -> None:
    oport = origin.server_address[1]
    url = f"http://origin.test:{oport}/file"
    p, port = run_splice(tmp_path, "record", oport)
    try:
        status, _ = curl(port, url, tmp_path / "a")
    finally:
        stop(p)
    assert status == "200"
    origin.shutdown()
    origin.server_close()
    p, port = run_splice(tmp_path, "replay", oport)
    try:
        status, headers = curl(port, url, tmp_path / "b")
        miss, miss_headers = curl(port, f"http://origin.test:{oport}/never", tmp_path / "c")
    finally:
        stop(p)
    assert status == "200" and "X-Splice-Replay: hit" in headers and "X-Origin: yes" in headers
    want = hashlib.sha256(PAYLOAD).hexdigest()
    assert hashlib.sha256((tmp_path / "b").read_bytes()).hexdigest() == want
    assert miss == "504" and "X-Shed-Error: REPLAY_MISS" in miss_headers


def test_store_ls_lists_what_the_server_recorded(
    tmp_path: Path, origin: http.server.ThreadingHTTPServer
) -> None:
    oport = origin.server_address[1]
    p, port = run_splice(tmp_path, "record", oport)
    try:
        assert curl(port, f"http://origin.test:{oport}/small", tmp_path / "a")[0] == "200"
    finally:
        stop(p)
    out = subprocess.run(
        [sys.executable, "-m", "splice", "store", "ls", "--json", "-c",
         str(tmp_path / "record.toml")],
        capture_output=True, text=True, timeout=30, check=True,
    ).stdout  # fmt: skip
    assert f"http://origin.test:{oport}/small" in out


def _response(s: socket.socket) -> bytes:
    """One whole response with a Content-Length body (head and body), read from ``s``."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        assert chunk, data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
    while len(body) < length:
        chunk = s.recv(65536)
        assert chunk, data
        body += chunk
    return head + b"\r\n\r\n" + body


def test_a_keep_alive_head_sent_one_byte_at_a_time_gets_408_after_head_timeout(
    tmp_path: Path, origin: http.server.ThreadingHTTPServer
) -> None:
    """A handed-over (store) connection holds each later head to ``head_timeout`` as the
    engine does: a byte every 0.25 s once restarted a per-read timeout for ever. The wait
    before a head's first byte is the keep-alive idle, not the head's."""
    oport = origin.server_address[1]
    request = f"GET http://origin.test:{oport}/small HTTP/1.1\r\nHost: x\r\n\r\n".encode()
    p, port = run_splice(tmp_path, "record", oport, "head_timeout = 1\nidle_timeout = 30\n")
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(request)
            assert _response(s).startswith(b"HTTP/1.1 200")
            time.sleep(1.5)  # idle past head_timeout: the next request is still served
            s.sendall(request)
            assert _response(s).startswith(b"HTTP/1.1 200")
            s.settimeout(0.25)
            t0, reply = time.monotonic(), b""
            for byte in request[:-2]:  # never whole; about 14 s of drip at most
                s.sendall(bytes([byte]))
                try:
                    reply = s.recv(65536)
                    break
                except TimeoutError:
                    pass
            waited = time.monotonic() - t0
            s.settimeout(5)
            rest = b"".join(iter(lambda: s.recv(65536), b"")) if reply else b""  # then EOF
    finally:
        stop(p)
    assert reply.startswith(b"HTTP/1.1 408 "), (reply, waited)
    assert b"X-Shed-Error: HEAD_TIMEOUT" in reply + rest and b"Connection: close" in reply
    assert 0.9 < waited < 3.0, waited
