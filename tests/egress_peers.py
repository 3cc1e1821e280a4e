"""Real peers for the egress gateway tests: splice as a forward proxy, real clients, namespaces.

- ``EgressSplice``: ``python -m splice serve`` for an egress config, optionally run under a
  command prefix (``ip netns exec NS``); the listeners' ports are read from its log.
- ``egress_certs``: a trustme CA and one leaf for the names given, as PEM files for curl/pip.
- ``TlsFiles``: an HTTPS/1.1 server (keep-alive, one thread per connection) serving a fixed
  set of paths; it records who asked for what.
- ``build_wheel``/``simple_index``: a tiny wheel and a PEP 503 "simple" page, for pip.
- ``curl``: the real curl, with a clean environment (no inherited ``*_proxy``), returning
  the last response's status, fields and body.
- ``proxy_hash``: a password hash made by ``splice passwd``, the way an admin makes one.
- ``Namespaces``: network namespaces and veth pairs; ``close`` kills what was started in
  them and deletes them.

Every wait is bounded; every socket, thread and process is closed by its owner.
"""

from __future__ import annotations

import base64
import hashlib
import html
import os
import re
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import trustme
from tls_peers import Certs
from upstreams import toml_text

#: the longest a peer here blocks on one socket operation
IO_TIMEOUT = 10.0
#: the longest a helper waits for a process or a condition
WAIT = 15.0

_LISTENING = re.compile(r"listening on (\S+):(\d+)$")


# -- splice --------------------------------------------------------------------------------


class EgressSplice:
    """``python -m splice serve -c CONFIG`` (under ``prefix``); stderr collected line by line."""

    def __init__(
        self,
        cfg: Mapping[str, Any],
        workdir: Path,
        *,
        prefix: Sequence[str] = (),
        name: str = "splice",
    ) -> None:
        self.config_path = workdir / f"{name}-{secrets.token_hex(3)}.toml"
        self.config_path.write_text(toml_text(cfg))
        self.lines: list[str] = []
        self._lock = threading.Lock()
        argv = [sys.executable, "-m", "splice", "serve", "-c", str(self.config_path)]
        self.proc = subprocess.Popen(
            [*prefix, *argv, "--drain", "1"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            errors="replace",
        )
        self._reader = threading.Thread(target=self._read, name=f"{name}-stderr", daemon=True)
        self._reader.start()
        try:
            self.ports = self._wait_listening(len(cfg["listen"]))
        except BaseException:
            self.stop()
            raise
        self.port = self.ports[0]

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self._lock:
                self.lines.append(line.rstrip("\n"))

    def _wait_listening(self, n: int) -> list[int]:
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            with self._lock:
                found = [m for line in self.lines if (m := _LISTENING.search(line))]
            if len(found) >= n:
                return [int(m[2]) for m in found]
            if self.proc.poll() is not None:
                break
            time.sleep(0.01)
        raise AssertionError(f"splice did not start:\n{self.stderr}")

    @property
    def stderr(self) -> str:
        with self._lock:
            return "\n".join(self.lines)

    def wait_line(self, needle: str, timeout: float = WAIT) -> str:
        """The first log line containing ``needle`` (the access log flushes every 0.25 s)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                hit = next((line for line in self.lines if needle in line), None)
            if hit is not None:
                return hit
            time.sleep(0.02)
        raise AssertionError(f"no log line with {needle!r} in:\n{self.stderr}")

    def reload(self, cfg: Mapping[str, Any]) -> None:
        """Rewrite the config and SIGHUP; returns once splice logged the reload."""
        with self._lock:
            before = sum("reloaded" in line for line in self.lines)
        self.config_path.write_text(toml_text(cfg))
        os.kill(self.proc.pid, signal.SIGHUP)
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            with self._lock:
                if sum("reloaded" in line for line in self.lines) > before:
                    return
            time.sleep(0.02)
        raise AssertionError(f"splice did not reload:\n{self.stderr}")

    def stop(self) -> int:
        """SIGTERM (SIGKILL if it hangs); the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(WAIT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(WAIT)
        self._reader.join(WAIT)
        assert self.proc.stderr is not None
        self.proc.stderr.close()
        return self.proc.returncode

    def problems(self) -> list[str]:
        """Log lines that mean splice itself failed."""
        bad = ("Traceback", "failed; closing", "abort failed", "ERROR")
        return [line for line in self.stderr.splitlines() if any(b in line for b in bad)]


def proxy_hash(user: str, password: str) -> str:
    """The ``[forward] users`` value ``splice passwd USER`` prints for ``password``."""
    out = subprocess.run(
        [sys.executable, "-m", "splice", "passwd", user],
        input=password + "\n",
        capture_output=True,
        text=True,
        timeout=WAIT,
        check=True,
    ).stdout
    m = re.fullmatch(rf'{re.escape(user)} = "(scrypt\$[^"]+)".*\n', out)
    assert m is not None, out
    return m[1]


def error_text(body: bytes) -> str:
    """An error page's text with HTML entities decoded (the rule names are quoted)."""
    return html.unescape(body.decode("utf-8", "replace"))


# -- TLS ------------------------------------------------------------------------------------


def egress_certs(directory: Path, *names: str) -> Certs:
    """A trustme CA and a leaf for ``names``, written to ``directory`` as PEM files."""
    ca = trustme.CA()
    leaf = ca.issue_cert(*names)
    ca_pem, cert_pem, key_pem = directory / "ca.pem", directory / "leaf.pem", directory / "leaf.key"
    ca.cert_pem.write_to_path(str(ca_pem))
    with open(cert_pem, "wb") as f:
        for blob in leaf.cert_chain_pems:
            f.write(blob.bytes())
    leaf.private_key_pem.write_to_path(str(key_pem))
    return Certs(ca, leaf, ca_pem, cert_pem, key_pem)


@dataclass(frozen=True)
class Seen:
    """One request a ``TlsFiles`` server answered."""

    peer: str
    method: str
    path: str
    host: str | None


class _FilesHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: TlsFiles

    def log_message(self, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        self.server.record(Seen(self.client_address[0], "GET", path, self.headers.get("Host")))
        found = self.server.files.get(path)
        if found is None:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        ctype, body = found
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class TlsFiles(ThreadingHTTPServer):
    """HTTPS on ``host``: ``files`` maps a path to (content type, body); 404 otherwise.

    The handshake runs in the connection's thread, never in the accept loop.
    """

    daemon_threads = False  # server_close joins every connection thread

    def __init__(
        self, certs: Certs, files: Mapping[str, tuple[str, bytes]], host: str = "127.0.0.1"
    ) -> None:
        self.context = certs.server_context()
        self.files = dict(files)
        self.seen: list[Seen] = []
        self.errors: list[BaseException] = []
        self._seen_lock = threading.Lock()
        super().__init__((host, 0), _FilesHandler)
        self.port: int = self.server_address[1]
        self._thread = threading.Thread(
            target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    def record(self, seen: Seen) -> None:
        with self._seen_lock:
            self.seen.append(seen)

    def requests(self) -> list[Seen]:
        with self._seen_lock:
            return list(self.seen)

    def finish_request(self, request: Any, client_address: Any) -> None:
        request.settimeout(IO_TIMEOUT)
        with self.context.wrap_socket(request, server_side=True) as tls:
            self.RequestHandlerClass(tls, client_address, self)  # type: ignore[arg-type]

    def handle_error(self, request: Any, client_address: Any) -> None:
        with self._seen_lock:
            self.errors.append(sys.exc_info()[1] or RuntimeError("unknown"))

    def close(self) -> None:
        self.shutdown()
        self._thread.join(WAIT)
        self.server_close()


# -- pip --------------------------------------------------------------------------------------


def _record_hash(data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
    return "sha256=" + digest.decode("ascii")


def build_wheel(directory: Path, name: str, version: str) -> Path:
    """A minimal valid pure-Python wheel ``NAME-VERSION-py3-none-any.whl`` in ``directory``."""
    dist = f"{name}-{version}.dist-info"
    files = {
        f"{name}/__init__.py": b'ROUTE = "through splice"\n',
        f"{dist}/METADATA": (
            f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
            "Summary: served by the egress tests\n"
        ).encode(),
        f"{dist}/WHEEL": (
            b"Wheel-Version: 1.0\nGenerator: egress_peers\nRoot-Is-Purelib: true\n"
            b"Tag: py3-none-any\n"
        ),
    }
    record = "".join(f"{p},{_record_hash(d)},{len(d)}\n" for p, d in files.items())
    record += f"{dist}/RECORD,,\n"
    path = directory / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for p, d in files.items():
            z.writestr(p, d)
        z.writestr(f"{dist}/RECORD", record)
    return path


def simple_index(name: str, wheel: Path) -> dict[str, tuple[str, bytes]]:
    """``TlsFiles`` paths for a PEP 503 index holding ``wheel`` (with its sha256 fragment)."""
    data = wheel.read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    link = f'<a href="/files/{wheel.name}#sha256={sha}">{wheel.name}</a>'
    page = f"<!DOCTYPE html><html><body>{link}</body></html>\n".encode()
    root = f'<!DOCTYPE html><html><body><a href="/simple/{name}/">{name}</a></body></html>\n'
    return {
        "/simple/": ("text/html", root.encode()),
        f"/simple/{name}/": ("text/html", page),
        f"/files/{wheel.name}": ("application/octet-stream", data),
    }


def clean_env(home: Path, **extra: str) -> dict[str, str]:
    """PATH, HOME and ``extra``: nothing inherited (no ``*_proxy``, ``no_proxy``, ``PIP_*``)."""
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home), **extra}


# -- curl -------------------------------------------------------------------------------------


@dataclass
class CurlResult:
    returncode: int
    #: the last response's status (0: none)
    status: int
    #: the last response's (lower-cased name, value) fields
    headers: list[tuple[str, str]]
    body: bytes
    stderr: str
    #: every status line in the ``-D`` dump (for CONNECT, curl dumps only the final one)
    statuses: list[int]
    #: per transfer: (status of the proxy's answer to CONNECT, 0 if none; new connections)
    transfers: list[tuple[int, int]]

    def header(self, name: str) -> str | None:
        values = [v for n, v in self.headers if n == name.lower()]
        assert len(values) <= 1, f"{name} appears {len(values)} times"
        return values[0] if values else None


def _parse_heads(raw: str) -> tuple[list[int], list[tuple[str, str]]]:
    statuses: list[int] = []
    headers: list[tuple[str, str]] = []
    for line in raw.splitlines():
        m = re.match(r"HTTP/[0-9.]+ (\d{3})", line)
        if m:
            statuses.append(int(m[1]))
            headers = []
        elif ":" in line:
            name, _, value = line.partition(":")
            headers.append((name.strip().lower(), value.strip()))
    return statuses, headers


def curl(
    *args: str,
    prefix: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    timeout: float = 20.0,
    own_output: bool = False,
) -> CurlResult:
    """``curl -sS ARGS`` (under ``prefix``) with a clean environment plus ``env``.

    The body is kept in ``body`` unless ``own_output`` (ARGS then give an ``-o`` per URL).
    """
    with tempfile.TemporaryDirectory(prefix="egress-curl-") as tmp:
        heads, body = Path(tmp) / "heads", Path(tmp) / "body"
        r = subprocess.run(
            [*prefix, "curl", "-sS", "-m", str(int(timeout - 2)), "-D", str(heads),
             *([] if own_output else ["-o", str(body)]),
             "-w", "%{http_connect} %{num_connects}\\n", *args],
            env=clean_env(Path(tmp), **(env or {})),
            capture_output=True,
            timeout=timeout,
            check=False,
        )  # fmt: skip
        raw = heads.read_bytes().decode("latin-1") if heads.exists() else ""
        data = body.read_bytes() if body.exists() else b""
    statuses, headers = _parse_heads(raw)
    transfers = [
        (int(m[1]), int(m[2])) for m in re.finditer(rb"^(\d{3}) (\d+)$", r.stdout, re.MULTILINE)
    ]
    return CurlResult(
        r.returncode,
        statuses[-1] if statuses else 0,
        headers,
        data,
        r.stderr.decode("utf-8", "replace"),
        statuses,
        transfers,
    )


# -- network namespaces ---------------------------------------------------------------------


def sh(*args: str, timeout: float = 20.0) -> subprocess.CompletedProcess[bytes]:
    """Run a command; CalledProcessError (with its stderr) when it fails."""
    r = subprocess.run(args, capture_output=True, timeout=timeout, check=False)
    if r.returncode != 0:
        raise subprocess.CalledProcessError(r.returncode, args, r.stdout, r.stderr)
    return r


class Namespaces:
    """Network namespaces with unique names; ``close`` stops their processes and deletes them."""

    def __init__(self) -> None:
        self.tag = secrets.token_hex(3)
        self.made: list[str] = []
        self.procs: list[subprocess.Popen[bytes]] = []

    def add(self, role: str) -> str:
        name = f"sp{role}{self.tag}"
        sh("ip", "netns", "add", name)
        self.made.append(name)
        sh("ip", "-n", name, "link", "set", "lo", "up")
        return name

    def link(self, a: str, dev_a: str, cidr_a: str, b: str, dev_b: str, cidr_b: str) -> None:
        """A veth pair: ``dev_a`` in ``a`` with ``cidr_a``, ``dev_b`` in ``b`` with ``cidr_b``."""
        sh("ip", "-n", a, "link", "add", dev_a, "type", "veth", "peer", "name", dev_b,
           "netns", b)  # fmt: skip
        for ns, dev, cidr in ((a, dev_a, cidr_a), (b, dev_b, cidr_b)):
            sh("ip", "-n", ns, "addr", "add", cidr, "dev", dev)
            sh("ip", "-n", ns, "link", "set", dev, "up")

    @staticmethod
    def prefix(ns: str) -> list[str]:
        return ["ip", "netns", "exec", ns]

    def run(self, ns: str, *args: str, timeout: float = 20.0) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            [*self.prefix(ns), *args], capture_output=True, timeout=timeout, check=False
        )

    def popen(self, ns: str, *args: str) -> subprocess.Popen[bytes]:
        p = subprocess.Popen(
            [*self.prefix(ns), *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        self.procs.append(p)
        return p

    def wait_listening(self, ns: str, host: str, port: int) -> None:
        """Poll (bounded) until something accepts on host:port inside ``ns``."""
        probe = f"import socket; socket.create_connection(({host!r}, {port}), 1).close()"
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            if self.run(ns, sys.executable, "-c", probe).returncode == 0:
                return
            time.sleep(0.05)
        raise AssertionError(f"nothing listens on {host}:{port} in {ns}")

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(5)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(5)
            if p.stderr is not None:
                p.stderr.close()
        for ns in reversed(self.made):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=20, check=False)
        self.made.clear()

    def remaining(self) -> list[str]:
        """Namespaces of this instance the kernel still lists."""
        out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=20)
        return [line.split()[0] for line in out.stdout.splitlines() if self.tag in line]
