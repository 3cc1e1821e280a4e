"""Real peers for the TLS passthrough and PROXY protocol tests, all on loopback.

- ``Certs``: a trustme CA and a leaf for ``*.srv.test``, also written to PEM files for
  nginx, curl and openssl.
- ``SniServer``: a "VM" that terminates TLS itself (Python ssl in threads) and answers
  any HTTP request with the SNI it saw in the body.
- ``RawServer``: a "VM" that records the exact bytes each connection sent, for byte
  comparisons and PROXY header checks; an optional reply is sent after a trigger.
- ``Splice``: ``python -m splice serve`` as a real subprocess, its stderr collected.
- ``Nginx``: a real nginx terminating TLS with http2, for curl --http2.
- ``client_hello``/``bio_handshake``: a ClientHello's bytes from an ssl MemoryBIO, and
  a handshake driven over a raw socket, so a test controls every byte sent.

Every loop and wait is bounded; every socket, thread and process is closed by its owner.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import trustme
from upstreams import one_worker

#: the base domain every test config serves
DOMAIN = "srv.test"
#: the upper bound on any single wait in these helpers
WAIT = 10.0
#: how long a server thread waits for a client's next bytes
IO_TIMEOUT = 5.0


def free_port() -> int:
    """A port that was free a moment ago (bind :0, read, close)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, host: str = "127.0.0.1", timeout: float = WAIT) -> None:
    """Poll-connect until something accepts on ``host:port``."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listens on {host}:{port}") from None
            time.sleep(0.05)


def wait_for(pred: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    """Poll ``pred`` until it holds; TimeoutError naming ``what`` otherwise."""
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.01)


def recv_until_eof(sock: socket.socket, timeout: float = IO_TIMEOUT, limit: int = 1 << 22) -> bytes:
    """Everything the peer sends until it closes (a reset counts as a close)."""
    sock.settimeout(timeout)
    deadline = time.monotonic() + timeout
    chunks: list[bytes] = []
    size = 0
    while size < limit:
        if time.monotonic() > deadline:
            raise TimeoutError(f"the peer did not close within {timeout} s")
        try:
            data = sock.recv(65536)
        except ConnectionResetError:
            break
        if not data:
            break
        chunks.append(data)
        size += len(data)
    return b"".join(chunks)


def recv_exactly(sock: socket.socket, n: int, timeout: float = IO_TIMEOUT) -> bytes:
    sock.settimeout(timeout)
    buf = bytearray()
    while len(buf) < n:
        data = sock.recv(n - len(buf))
        if not data:
            raise EOFError(f"closed after {len(buf)} of {n} bytes")
        buf += data
    return bytes(buf)


# -- certificates ---------------------------------------------------------------------


@dataclass
class Certs:
    ca: trustme.CA
    leaf: trustme.LeafCert
    ca_pem: Path
    cert_pem: Path
    key_pem: Path

    def server_context(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.leaf.configure_cert(ctx)
        return ctx

    def client_context(self, *, check_hostname: bool = True) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        self.ca.configure_trust(ctx)
        ctx.check_hostname = check_hostname
        return ctx


def make_certs(directory: Path) -> Certs:
    ca = trustme.CA()
    leaf = ca.issue_cert(f"*.{DOMAIN}", DOMAIN, "localhost")
    ca_pem = directory / "ca.pem"
    cert_pem = directory / "leaf.pem"
    key_pem = directory / "leaf.key"
    ca.cert_pem.write_to_path(str(ca_pem))
    with open(cert_pem, "wb") as f:
        for blob in leaf.cert_chain_pems:
            f.write(blob.bytes())
    leaf.private_key_pem.write_to_path(str(key_pem))
    return Certs(ca, leaf, ca_pem, cert_pem, key_pem)


# -- servers ----------------------------------------------------------------------------


@dataclass
class Seen:
    """What one connection to a test server showed."""

    peer: tuple[str, int]
    data: bytes = b""
    sni: str | None = None
    alpn: str | None = None
    done: threading.Event = field(default_factory=threading.Event)


class ThreadedServer:
    """Accepts on 127.0.0.1 in a thread; one thread per connection; ``close`` joins all."""

    def __init__(self, port: int = 0) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", port))
        self.sock.listen(128)
        self.sock.settimeout(0.1)
        self.port: int = self.sock.getsockname()[1]
        self.seen: list[Seen] = []
        self.errors: list[BaseException] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._accepter = threading.Thread(target=self._accept_loop, daemon=True)
        self._accepter.start()

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                conn, peer = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            seen = Seen(peer[:2])
            with self._lock:
                self.seen.append(seen)
                t = threading.Thread(target=self._run, args=(conn, seen), daemon=True)
                self._threads.append(t)
            t.start()

    def _run(self, conn: socket.socket, seen: Seen) -> None:
        try:
            conn.settimeout(IO_TIMEOUT)
            self.handle(conn, seen)
        except (OSError, ssl.SSLError, EOFError) as e:
            with self._lock:
                self.errors.append(e)
        finally:
            conn.close()
            seen.done.set()

    def handle(self, conn: socket.socket, seen: Seen) -> None:
        raise NotImplementedError

    def wait_seen(self, count: int = 1, timeout: float = WAIT) -> list[Seen]:
        """The first ``count`` connections, once each has finished."""
        deadline = time.monotonic() + timeout
        while len(self.seen) < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(self.seen)} of {count} connections arrived")
            time.sleep(0.01)
        for s in self.seen[:count]:
            if not s.done.wait(max(0.0, deadline - time.monotonic())):
                raise TimeoutError("a connection did not finish")
        return self.seen[:count]

    def reset(self) -> None:
        with self._lock:
            self.seen.clear()
            self.errors.clear()

    def close(self) -> None:
        self._stop.set()
        self._accepter.join(WAIT)
        self.sock.close()
        with self._lock:
            threads = list(self._threads)
        for t in threads:
            t.join(WAIT)


def read_head(conn: socket.socket | ssl.SSLSocket, limit: int = 65536) -> bytes:
    """Bytes up to and including the blank line ending an HTTP head (or EOF)."""
    buf = b""
    while b"\r\n\r\n" not in buf and len(buf) < limit:
        data = conn.recv(4096)
        if not data:
            break
        buf += data
    return buf


def http_response(body: bytes, status: str = "200 OK") -> bytes:
    return (
        f"HTTP/1.1 {status}\r\nContent-Length: {len(body)}\r\n"
        "Content-Type: text/plain\r\nConnection: close\r\n\r\n"
    ).encode() + body


class SniServer(ThreadedServer):
    """A TLS VM: answers each HTTP request with ``sni=NAME port=PORT`` (NAME '-' if none)."""

    def __init__(self, certs: Certs, port: int = 0) -> None:
        self._local = threading.local()
        self.context = certs.server_context()
        self.context.set_alpn_protocols(["http/1.1"])
        self.context.sni_callback = self._on_sni
        super().__init__(port)

    def _on_sni(self, _sock: object, name: str | None, _ctx: ssl.SSLContext) -> None:
        self._local.sni = name

    def handle(self, conn: socket.socket, seen: Seen) -> None:
        self._local.sni = None
        with self.context.wrap_socket(conn, server_side=True, do_handshake_on_connect=False) as tls:
            try:
                tls.do_handshake()
            finally:
                seen.sni = self._local.sni
            seen.alpn = tls.selected_alpn_protocol()
            seen.data = read_head(tls)
            body = f"sni={seen.sni or '-'} port={self.port}\n".encode()
            tls.sendall(http_response(body))
            # close_notify, as a real server sends (OpenSSL 3 clients call its absence an error)
            with suppress(OSError, ssl.SSLError):
                tls.unwrap()


class EchoServer(ThreadedServer):
    """A plain TCP VM that sends back every byte it reads, until the client closes."""

    def handle(self, conn: socket.socket, seen: Seen) -> None:
        while data := conn.recv(65536):
            conn.sendall(data)


class RawServer(ThreadedServer):
    """A plain TCP VM that records every byte.

    ``reply(seen_bytes) -> bytes | None`` is asked after each read; the first non-None
    answer is sent, then the server closes (``close_after_reply``) or reads on until the
    client closes. Without ``reply`` the server reads until the client closes.
    """

    def __init__(
        self,
        reply: Callable[[bytes], bytes | None] | None = None,
        *,
        close_after_reply: bool = False,
    ) -> None:
        self.reply = reply
        self.close_after_reply = close_after_reply
        super().__init__()

    def handle(self, conn: socket.socket, seen: Seen) -> None:
        buf = bytearray()
        replied = False
        deadline = time.monotonic() + IO_TIMEOUT
        while time.monotonic() < deadline:
            try:
                data = conn.recv(65536)
            except ConnectionResetError:
                break
            if not data:
                break
            buf += data
            seen.data = bytes(buf)
            if self.reply is not None and not replied:
                answer = self.reply(bytes(buf))
                if answer is not None:
                    conn.sendall(answer)
                    replied = True
                    if self.close_after_reply:
                        break
        seen.data = bytes(buf)


# -- TLS clients over raw sockets ---------------------------------------------------------


class BioClient:
    """A TLS client whose bytes go through memory, so the test decides how they are sent."""

    def __init__(self, ctx: ssl.SSLContext, server_hostname: str | None) -> None:
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        self.obj = ctx.wrap_bio(self.incoming, self.outgoing, server_hostname=server_hostname)

    def hello(self) -> bytes:
        """The ClientHello records this client would send first."""
        with suppress(ssl.SSLWantReadError):
            self.obj.do_handshake()
        return self.outgoing.read()

    def finish_handshake(self, sock: socket.socket, timeout: float = IO_TIMEOUT) -> None:
        """Run the rest of the handshake over ``sock`` (the hello was sent already)."""
        sock.settimeout(timeout)
        deadline = time.monotonic() + timeout
        while True:
            if time.monotonic() > deadline:
                raise TimeoutError("the TLS handshake did not finish")
            try:
                self.obj.do_handshake()
            except ssl.SSLWantReadError:
                self._flush(sock)
                data = sock.recv(65536)
                if not data:
                    raise EOFError("closed during the handshake") from None
                self.incoming.write(data)
                continue
            self._flush(sock)
            return

    def request(self, sock: socket.socket, raw: bytes, timeout: float = IO_TIMEOUT) -> bytes:
        """Send ``raw`` over TLS and read the reply until the server closes."""
        self.obj.write(raw)
        self._flush(sock)
        sock.settimeout(timeout)
        out = bytearray()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                chunk = self.obj.read(65536)
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLEOFError:
                break
            else:
                if chunk:
                    out += chunk
                    continue
                # b"": the server's close_notify; answer with ours
                with suppress(ssl.SSLError):
                    self.obj.unwrap()
                self._flush(sock)
                break
            data = sock.recv(65536)
            if not data:
                self.incoming.write_eof()
                with suppress(ssl.SSLError):
                    out += self.obj.read(65536)
                break
            self.incoming.write(data)
        return bytes(out)

    def _flush(self, sock: socket.socket) -> None:
        data = self.outgoing.read()
        if data:
            sock.sendall(data)


def client_hello(ctx: ssl.SSLContext, server_hostname: str | None) -> bytes:
    return BioClient(ctx, server_hostname).hello()


def https_get(
    ctx: ssl.SSLContext,
    port: int,
    server_hostname: str | None,
    *,
    preamble: bytes = b"",
    source: str | None = None,
    timeout: float = IO_TIMEOUT,
) -> bytes:
    """A GET through splice with Python's ssl; the response body. ``preamble`` goes first,
    in plaintext (a PROXY header); ``source`` binds the client to that loopback address."""
    with socket.socket() as raw:
        raw.settimeout(timeout)
        if source is not None:
            raw.bind((source, 0))
        raw.connect(("127.0.0.1", port))
        if preamble:
            raw.sendall(preamble)
        with ctx.wrap_socket(raw, server_hostname=server_hostname) as tls:
            host = server_hostname or "x"
            tls.sendall(f"GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
            data = recv_until_eof(tls, timeout)
    return data.partition(b"\r\n\r\n")[2]


def handshake_error(
    ctx: ssl.SSLContext, port: int, server_hostname: str | None, timeout: float = IO_TIMEOUT
) -> ssl.SSLError:
    """The SSLError a handshake through splice fails with (AssertionError if it succeeds)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as raw:
        try:
            with ctx.wrap_socket(raw, server_hostname=server_hostname):
                pass
        except ssl.SSLError as e:
            return e
    raise AssertionError("the handshake succeeded")


# -- PROXY headers, built by hand (not by the engine's encoder) --------------------------------


def proxy_v1(src: tuple[str, int], dst: tuple[str, int]) -> bytes:
    return f"PROXY TCP4 {src[0]} {dst[0]} {src[1]} {dst[1]}\r\n".encode()


def proxy_v2(src: tuple[str, int], dst: tuple[str, int]) -> bytes:
    payload = (
        socket.inet_aton(src[0])
        + socket.inet_aton(dst[0])
        + src[1].to_bytes(2, "big")
        + dst[1].to_bytes(2, "big")
    )
    sig = b"\r\n\r\n\x00\r\nQUIT\n"
    return sig + b"\x21\x11" + len(payload).to_bytes(2, "big") + payload


# -- splice as a subprocess ---------------------------------------------------------------


class Splice:
    """``python -m splice serve -c CONFIG``; stderr is collected line by line."""

    def __init__(self, config: str, directory: Path, ports: list[int]) -> None:
        path = directory / "splice.toml"
        path.write_text(one_worker(config))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "splice", "serve", "-c", str(path), "--drain", "1"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self._lines: list[str] = []
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        try:
            for port in ports:
                self._wait_port(port)
        except BaseException:
            self.stop()
            raise

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self._lock:
                self._lines.append(line.rstrip("\n"))

    def _wait_port(self, port: int) -> None:
        deadline = time.monotonic() + WAIT
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"splice exited {self.proc.returncode}:\n{self.log()}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"splice did not listen on {port}:\n{self.log()}") from None
                time.sleep(0.05)

    @property
    def lines(self) -> list[str]:
        with self._lock:
            return list(self._lines)

    def log(self) -> str:
        return "\n".join(self.lines)

    def wait_line(self, needle: str, timeout: float = WAIT) -> str:
        """The first stderr line containing ``needle`` (access lines flush every 0.25 s)."""
        deadline = time.monotonic() + timeout
        while True:
            for line in self.lines:
                if needle in line:
                    return line
            if time.monotonic() > deadline:
                raise TimeoutError(f"no line with {needle!r} in:\n{self.log()}")
            time.sleep(0.02)

    def fd_count(self) -> int:
        """Open file descriptors of the splice process (Linux /proc)."""
        return len(os.listdir(f"/proc/{self.proc.pid}/fd"))

    @contextmanager
    def paused(self) -> Iterator[None]:
        """SIGSTOP splice (by PID) for the block: the kernel still queues connections."""
        os.kill(self.proc.pid, signal.SIGSTOP)
        try:
            yield
        finally:
            os.kill(self.proc.pid, signal.SIGCONT)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(WAIT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(WAIT)
        self._reader.join(WAIT)
        if self.proc.stderr is not None:
            self.proc.stderr.close()


# -- nginx ----------------------------------------------------------------------------------

NGINX_CONF = """\
master_process off;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    server {{
        listen 127.0.0.1:{port} ssl http2;
        server_name _;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        location / {{
            default_type text/plain;
            return 200 "nginx sni=$ssl_server_name proto=$server_protocol\\n";
        }}
    }}
}}
"""


class Nginx:
    """A real nginx with TLS and http2 on loopback, in the foreground, stopped by PID."""

    def __init__(self, certs: Certs, prefix: Path, port: int = 0) -> None:
        binary = shutil.which("nginx") or "/usr/sbin/nginx"
        prefix.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        conf = prefix / "nginx.conf"
        conf.write_text(
            NGINX_CONF.format(prefix=prefix, port=self.port, cert=certs.cert_pem, key=certs.key_pem)
        )
        self.prefix = prefix
        self.proc = subprocess.Popen(
            [binary, "-c", str(conf), "-p", str(prefix), "-g", "daemon off;"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + WAIT
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"nginx exited: {self.error_log()}")
                try:
                    with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                        break
                except OSError:
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"nginx did not listen: {self.error_log()}") from None
                    time.sleep(0.05)
        except BaseException:
            self.stop()
            raise

    def error_log(self) -> str:
        path = self.prefix / "error.log"
        return path.read_text() if path.exists() else ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(WAIT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(WAIT)
