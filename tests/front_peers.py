"""Peers for the front-proxy tests: named VMs, splice, and real Caddy / nginx fronts.

Everything listens on 127.0.0.1. Each VM is a threaded HTTP/1.1 keep-alive server
that answers every request with its own name and the SHA-256 of the body it got.
splice, Caddy and nginx run as subprocesses, each with its log in a file; each is
stopped by its own PID (SIGTERM, then SIGKILL if it hangs). Every wait is bounded.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

#: the base domain the fronts and splice serve
DOMAIN = "srv.test"
#: the longest a VM handler, a client or a start-up waits on anything
IO_TIMEOUT = 10.0
#: how long a stopped process gets before SIGKILL
STOP_TIMEOUT = 10.0
#: the piece size of a chunked request body
CHUNK = 1 << 16
#: splice's drain at SIGTERM: the fronts are stopped first, so nothing is left to drain
_DRAIN = ("--drain", "5")


def free_port() -> int:
    """A loopback port that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# -- the VMs -----------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = IO_TIMEOUT
    server: NamedVM
    # set by send_response/send_header, flushed by flush_headers; a CPython detail that
    # typeshed leaves out, declared here for the one-write answer below
    _headers_buffer: list[bytes]

    def setup(self) -> None:
        super().setup()
        # the socket's timeout: idle this long between requests, the VM closes
        self.connection.settimeout(self.server.idle_timeout)
        with self.server.lock:
            self.server.connections += 1

    def do_GET(self) -> None:
        self._answer()

    def do_POST(self) -> None:
        self._answer()

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            parts: list[bytes] = []
            for _ in range(1 << 16):
                size = int(self.rfile.readline(1024).split(b";", 1)[0], 16)
                if size == 0:
                    while self.rfile.readline(1024) not in (b"\r\n", b""):
                        pass
                    return b"".join(parts)
                parts.append(self.rfile.read(size))
                self.rfile.readline(16)
            raise ValueError("too many chunks")
        return self.rfile.read(int(self.headers.get("Content-Length", "0")))

    def _answer(self) -> None:
        body = self._body()
        with self.server.lock:
            self.server.requests += 1
        answer = json.dumps(
            {
                "name": self.server.name,
                "method": self.command,
                "path": self.path,
                "host": self.headers.get("Host"),
                "transfer_encoding": self.headers.get("Transfer-Encoding"),
                "body_len": len(body),
                "body_sha256": sha256_hex(body),
            }
        ).encode()
        # head and body in one write: two small writes meet Nagle and delayed ACK (40 ms)
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self._headers_buffer.append(b"\r\n" + answer)
        self.flush_headers()

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        # a request this VM could not parse means it got misframed bytes
        with self.server.lock:
            self.server.problems.append(f"{code} {message} ({self.requestline!r})")
        super().send_error(code, message, explain)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class NamedVM(ThreadingHTTPServer):
    """A "shed VM": names itself and hashes each request body; counts what it served."""

    daemon_threads = False  # server_close joins every connection thread
    block_on_close = True

    def __init__(self, name: str, idle_timeout: float = IO_TIMEOUT) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.name = name
        #: a connection idle this long is closed by the VM (its keep-alive timeout)
        self.idle_timeout = idle_timeout
        self.port = int(self.server_address[1])
        self.lock = threading.Lock()
        self.connections = 0
        self.requests = 0
        self.problems: list[str] = []
        self._thread = threading.Thread(
            target=self.serve_forever, kwargs={"poll_interval": 0.05}, name=f"vm-{name}"
        )
        self._thread.start()

    def handle_error(self, request: Any, client_address: Any) -> None:
        with self.lock:
            self.problems.append(f"handler error: {sys.exc_info()[1]!r}")

    def close(self) -> None:
        self.shutdown()
        self._thread.join(IO_TIMEOUT)
        self.server_close()


# -- processes ---------------------------------------------------------------------


def _wait_connectable(port: int, proc: subprocess.Popen[bytes], log: Path, what: str) -> None:
    deadline = time.monotonic() + IO_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.02)
    raise AssertionError(f"{what} did not come up on port {port}:\n{_tail(log)}")


def _tail(path: Path, n: int = 4000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return "(no log)"


def _stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> int:
    if proc.poll() is None:
        os.kill(proc.pid, sig)
        try:
            proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(STOP_TIMEOUT)
    return int(proc.returncode)


class Splice:
    """``python -m splice serve`` for two sheds on a fresh loopback port; stderr in a file."""

    def __init__(self, workdir: Path, sheds: dict[str, int]) -> None:
        self.port = free_port()
        self.config = workdir / "splice.toml"
        # the front is trusted, as the README's deployment has it: its connections,
        # pooled across sheds, get every answer framed (``frame_responses``)
        lines = ["workers = 1", f'domains = ["{DOMAIN}"]', 'trusted_fronts = ["127.0.0.1/32"]']
        lines += ["", "[[listen]]"]
        lines.append(f'address = "127.0.0.1:{self.port}"')
        for name, port in sheds.items():
            lines += ["", f"[sheds.{name}]", 'address = "127.0.0.1"', f"default_port = {port}"]
        self.config.write_text("\n".join(lines) + "\n")
        self.log = workdir / "splice.stderr"
        with self.log.open("wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "splice", "serve", "-c", str(self.config), *_DRAIN],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
            )
        self.returncode: int | None = None
        try:
            self._wait_listening()
        except BaseException:
            self.stop()
            raise

    def _wait_listening(self) -> None:
        """Up once it logs ``listening on``: no probe connection reaches the access log."""
        want = f"listening on 127.0.0.1:{self.port}"
        deadline = time.monotonic() + IO_TIMEOUT
        while time.monotonic() < deadline and self.proc.poll() is None:
            if want in self.stderr:
                return
            time.sleep(0.02)
        raise AssertionError(f"splice did not start:\n{self.stderr}")

    @property
    def stderr(self) -> str:
        return _tail(self.log, 1 << 24)

    def stop(self) -> int:
        """SIGTERM (flushes the access log) and wait; the exit status."""
        if self.returncode is None:
            self.returncode = _stop(self.proc)
        return self.returncode

    def access_lines(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.startswith("access ")]


class Front:
    """A real front proxy (Caddy or nginx) on a loopback port, proxying to splice."""

    def __init__(self, kind: str, workdir: Path, splice_port: int) -> None:
        self.kind = kind
        self.port = free_port()
        self.dir = workdir / kind
        self.dir.mkdir()
        self.log = self.dir / "stderr"
        if kind == "caddy":
            argv, env = self._caddy(splice_port)
        elif kind == "nginx":
            argv, env = self._nginx(splice_port)
        else:
            raise ValueError(kind)
        with self.log.open("wb") as err:
            self.proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=err, stderr=err, env=env
            )
        self.returncode: int | None = None
        try:
            _wait_connectable(self.port, self.proc, self.log, kind)
        except BaseException:
            self.stop()
            raise

    def _caddy(self, splice_port: int) -> tuple[list[str], dict[str, str]]:
        conf = self.dir / "Caddyfile"
        conf.write_text(
            "{\n"
            "\tadmin off\n"
            "\tauto_https off\n"
            "\tgrace_period 2s\n"
            f"\tstorage file_system {self.dir / 'data'}\n"
            "}\n"
            f"http://*.{DOMAIN}:{self.port} {{\n"
            "\tbind 127.0.0.1\n"
            f"\treverse_proxy 127.0.0.1:{splice_port} {{\n"
            "\t\theader_up Host {host}\n"
            "\t}\n"
            "}\n"
        )
        home = str(self.dir)
        env = dict(os.environ, HOME=home, XDG_DATA_HOME=home, XDG_CONFIG_HOME=home)
        exe = shutil.which("caddy") or "caddy"
        return [exe, "run", "--config", str(conf), "--adapter", "caddyfile"], env

    def _nginx(self, splice_port: int) -> tuple[list[str], dict[str, str]]:
        prefix = self.dir
        user = "user root root;\n" if os.geteuid() == 0 else ""
        conf = prefix / "nginx.conf"
        conf.write_text(
            f"{user}"
            "worker_processes 1;\n"
            f"pid {prefix / 'nginx.pid'};\n"
            f"error_log {prefix / 'error.log'} warn;\n"
            "events { worker_connections 256; }\n"
            "http {\n"
            "  access_log off;\n"
            f"  client_body_temp_path {prefix / 'body'};\n"
            f"  proxy_temp_path {prefix / 'proxy'};\n"
            f"  fastcgi_temp_path {prefix / 'fastcgi'};\n"
            f"  uwsgi_temp_path {prefix / 'uwsgi'};\n"
            f"  scgi_temp_path {prefix / 'scgi'};\n"
            "  client_max_body_size 4m;\n"
            "  client_body_buffer_size 2m;\n"
            f"  upstream splice {{ server 127.0.0.1:{splice_port}; keepalive 16; }}\n"
            "  server {\n"
            f"    listen 127.0.0.1:{self.port};\n"
            "    location / {\n"
            "      proxy_pass http://splice;\n"
            "      proxy_http_version 1.1;\n"
            '      proxy_set_header Connection "";\n'
            "      proxy_set_header Host $host;\n"
            "    }\n"
            "  }\n"
            "}\n"
        )
        exe = shutil.which("nginx") or "/usr/sbin/nginx"
        argv = [exe, "-c", str(conf), "-p", str(prefix), "-e", str(prefix / "error.log")]
        return [*argv, "-g", "daemon off;"], dict(os.environ)

    @property
    def output(self) -> str:
        text = _tail(self.log)
        if self.kind == "nginx":
            text += _tail(self.dir / "error.log")
        return text

    def stop(self) -> int:
        """SIGTERM (nginx: fast shutdown; Caddy: graceful, bounded by grace_period)."""
        if self.returncode is None:
            self.returncode = _stop(self.proc)
        return self.returncode


# -- the client ----------------------------------------------------------------------


class Client:
    """One keep-alive HTTP/1.1 connection to the front; each request names its shed."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=IO_TIMEOUT)

    def request(
        self, shed: str, method: str = "GET", body: bytes | None = None, chunked: bool = False
    ) -> dict[str, Any]:
        """One request; a ``chunked`` body is sent in 64 KiB chunks (Transfer-Encoding)."""
        headers = {"Host": f"{shed}.{DOMAIN}:{self.port}"}
        if body is not None:
            headers["Content-Type"] = "application/octet-stream"
        target = f"/{shed}/{method.lower()}"
        if chunked:
            assert body is not None
            headers["Transfer-Encoding"] = "chunked"
            pieces = [body[i : i + CHUNK] for i in range(0, len(body), CHUNK)]
            self.conn.request(
                method, target, body=iter(pieces), headers=headers, encode_chunked=True
            )
        else:
            self.conn.request(method, target, body=body, headers=headers)
        resp = self.conn.getresponse()
        raw = resp.read()
        if resp.status != 200:
            raise AssertionError(f"{method} {shed}: {resp.status} {resp.reason}: {raw[:500]!r}")
        answer: dict[str, Any] = json.loads(raw)
        return answer

    def close(self) -> None:
        self.conn.close()
