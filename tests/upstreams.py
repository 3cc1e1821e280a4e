"""Real peers for the integration tests: upstream "VMs", a raw HTTP client, splice itself.

Everything runs on loopback. The upstreams are blocking-socket servers, one thread
per connection, so a test can count what reached a VM (accepted connections, the
raw bytes of each) without racing it: ``Upstream.sync`` returns once every
connection started before it has been accepted. splice runs as a real subprocess
(``python -m splice serve``) on port 0; the port is read back from its
``listening on`` log line, so there is no free-port race.

Every wait here is bounded; every socket is closed (``filterwarnings = error``
turns a leaked socket into a failure).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import h11
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Event,
    Message,
    Ping,
    TextMessage,
)
from wsproto.events import Request as WsRequest

#: the longest any single socket operation of a test peer may block
IO_TIMEOUT = 15.0
#: how long a server thread gets to finish when its server is closed
JOIN_TIMEOUT = 5.0
#: bytes per recv/send of the test peers
CHUNK = 1 << 16
#: bulk data is produced and hashed in pieces of this size
BLOCK = 1 << 20
#: the base domain every test config serves
DOMAIN = "test"


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def random_blocks(seed: int, size: int) -> Iterator[bytes]:
    """``size`` pseudo-random bytes (no repeating block, so a reordering shows in the hash)."""
    rng = random.Random(seed)
    left = size
    while left > 0:
        n = min(BLOCK, left)
        yield rng.randbytes(n)
        left -= n


def random_body(seed: int, size: int) -> bytes:
    return b"".join(random_blocks(seed, size))


# -- upstreams ---------------------------------------------------------------------


@dataclass
class ConnRecord:
    """One connection an upstream accepted."""

    index: int
    peer: tuple[str, int]
    #: every byte received (only when the server records bytes)
    received: bytearray = field(default_factory=bytearray)
    #: requests answered on this connection
    requests: int = 0
    #: set when the server is done with the connection and has closed it
    done: threading.Event = field(default_factory=threading.Event)


class Upstream:
    """A TCP server on loopback: an accept thread and one thread per connection."""

    #: keep every received byte in ``ConnRecord.received``
    record_bytes = True

    def __init__(self, name: str, host: str = "127.0.0.1") -> None:
        self.name = name
        self._listener = socket.create_server((host, 0), backlog=128)
        self.host: str = host
        self.port: int = self._listener.getsockname()[1]
        self.conns: list[ConnRecord] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._probes: set[tuple[str, int]] = set()
        self._probed: set[tuple[str, int]] = set()
        self._active: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []
        self._acceptor = threading.Thread(
            target=self._accept_loop, name=f"{name}-accept", daemon=True
        )
        self._acceptor.start()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} {self.host}:{self.port}>"

    @property
    def accepted(self) -> int:
        """Connections accepted so far (``sync`` probes not counted)."""
        with self._lock:
            return len(self.conns)

    def sync(self, timeout: float = 5.0) -> None:
        """Return once every connection begun before this call has been accepted.

        A probe connection is queued behind them; the kernel hands out accepts in
        order, so when the probe is accepted the ones before it have been too.
        """
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.bind((self.host, 0))
            me = probe.getsockname()[:2]
            with self._lock:
                self._probes.add(me)
            probe.settimeout(timeout)
            probe.connect((self.host, self.port))
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                with self._lock:
                    if me in self._probed:
                        return
                time.sleep(0.005)
        raise AssertionError(f"{self}: sync probe not accepted within {timeout} s")

    def wait_done(self, index: int, timeout: float = 5.0) -> ConnRecord:
        """Connection ``index``, once its server thread has closed it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                rec = self.conns[index] if index < len(self.conns) else None
            if rec is not None and rec.done.wait(max(0.0, deadline - time.monotonic())):
                return rec
            time.sleep(0.005)
        raise AssertionError(f"{self}: connection {index} not finished within {timeout} s")

    def recv(self, sock: socket.socket, rec: ConnRecord, n: int = CHUNK) -> bytes:
        data = sock.recv(n)
        if self.record_bytes:
            rec.received += data
        return data

    def serve(self, sock: socket.socket, rec: ConnRecord) -> None:
        raise NotImplementedError

    def close(self) -> None:
        self._stop.set()
        try:
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept (Linux)
        except OSError:
            pass
        self._acceptor.join(JOIN_TIMEOUT)
        self._listener.close()
        with self._lock:
            active = list(self._active)
        for sock in active:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for t in self._threads:
            t.join(JOIN_TIMEOUT)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                sock, addr = self._listener.accept()
            except OSError:
                return
            peer = addr[:2]
            with self._lock:
                if peer in self._probes:
                    self._probes.discard(peer)
                    self._probed.add(peer)
                    sock.close()
                    continue
                rec = ConnRecord(len(self.conns), peer)
                self.conns.append(rec)
                self._active.add(sock)
            sock.settimeout(IO_TIMEOUT)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            t = threading.Thread(
                target=self._run, args=(sock, rec), name=f"{self.name}-{rec.index}", daemon=True
            )
            self._threads.append(t)
            t.start()

    def _run(self, sock: socket.socket, rec: ConnRecord) -> None:
        try:
            with sock:
                self.serve(sock, rec)
        except OSError:
            pass  # resets and timeouts end a connection; the test sees it from its side
        finally:
            with self._lock:
                self._active.discard(sock)
            rec.done.set()


class EchoApp(Upstream):
    """An HTTP/1.1 app (h11) that names itself and echoes each request as JSON.

    The answer: ``name``, ``port``, ``conn`` (which accepted connection), ``seq``
    (request number on it), ``method``, ``target``, ``headers``, ``body_len``,
    ``body_sha256``, ``continue_sent``. It answers ``Expect: 100-continue`` with a
    ``100 Continue`` first. ``Upgrade: websocket`` becomes a WebSocket echo
    (wsproto); any other Upgrade is refused (426, or 400 for target ``/refuse-400``)
    and the connection stays open. Target ``/close`` answers with ``Connection: close``.
    """

    def serve(self, sock: socket.socket, rec: ConnRecord) -> None:
        conn = h11.Connection(h11.SERVER)
        try:
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(self.recv(sock, rec))
                elif isinstance(event, h11.Request):
                    if not self._exchange(sock, rec, conn, event):
                        return
                    if conn.our_state is h11.MUST_CLOSE:
                        return
                    conn.start_next_cycle()
                else:
                    return  # ConnectionClosed, or something this app does not expect
        except h11.RemoteProtocolError:
            return  # e.g. the connection ended inside a body

    def _exchange(
        self, sock: socket.socket, rec: ConnRecord, conn: h11.Connection, req: h11.Request
    ) -> bool:
        """Answer one request; False when the connection is no longer HTTP."""
        continue_sent = False
        if conn.they_are_waiting_for_100_continue:
            sock.sendall(conn.send(h11.InformationalResponse(status_code=100, headers=[])))
            continue_sent = True
        digest = hashlib.sha256()
        size = 0
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(self.recv(sock, rec))
            elif isinstance(event, h11.Data):
                digest.update(event.data)
                size += len(event.data)
            elif isinstance(event, h11.EndOfMessage):
                break
            else:
                return False
        rec.requests += 1
        upgrade = dict(req.headers).get(b"upgrade")
        if upgrade is not None and upgrade.lower() == b"websocket":
            self._websocket(sock, rec, conn, req)
            return False
        echo = {
            "name": self.name,
            "port": self.port,
            "conn": rec.index,
            "seq": rec.requests,
            "method": req.method.decode(),
            "target": req.target.decode(),
            "headers": [[n.decode(), v.decode("latin-1")] for n, v in req.headers.raw_items()],
            "body_len": size,
            "body_sha256": digest.hexdigest(),
            "continue_sent": continue_sent,
        }
        status = 200
        if upgrade is not None:
            status = 400 if req.target == b"/refuse-400" else 426
        body = json.dumps(echo).encode()
        headers = [("content-type", "application/json"), ("content-length", str(len(body)))]
        if req.target == b"/close":
            headers.append(("connection", "close"))
        out = conn.send(h11.Response(status_code=status, headers=headers))
        out += conn.send(h11.Data(data=body))
        out += conn.send(h11.EndOfMessage())
        sock.sendall(out)  # one write: no Nagle wait between head and body
        return True

    def _websocket(
        self, sock: socket.socket, rec: ConnRecord, conn: h11.Connection, req: h11.Request
    ) -> None:
        """Hand the connection to wsproto: accept, then echo every message until close."""
        rest, _ = conn.trailing_data
        head = [b"%s %s HTTP/1.1\r\n" % (req.method, req.target)]
        head += [b"%s: %s\r\n" % (n, v) for n, v in req.headers.raw_items()]
        ws = WSConnection(ConnectionType.SERVER)
        ws.receive_data(b"".join(head) + b"\r\n" + bytes(rest))
        while True:
            for event in ws.events():
                if isinstance(event, WsRequest):
                    sock.sendall(ws.send(AcceptConnection()))
                elif isinstance(event, TextMessage | BytesMessage):
                    sock.sendall(ws.send(event))
                elif isinstance(event, Ping):
                    sock.sendall(ws.send(event.response()))
                elif isinstance(event, CloseConnection):
                    sock.sendall(ws.send(event.response()))
                    return
            data = self.recv(sock, rec)
            if not data:
                return
            ws.receive_data(data)


class BulkServer(Upstream):
    """A raw HTTP/1.1 server for big bodies, hashing at its end; keeps no payload.

    - ``GET /download/N``: N pseudo-random bytes (Content-Length); the SHA-256 of what
      was sent is appended to ``sent``.
    - ``POST /upload`` (Content-Length): answers ``{"received": N, "sha256": ...}``.
    - ``POST /echo`` (Content-Length): streams the body back as it arrives.
    """

    record_bytes = False

    def __init__(self, name: str, host: str = "127.0.0.1") -> None:
        super().__init__(name, host)
        self.sent: list[str] = []

    def wait_sent(self, count: int, timeout: float = 5.0) -> list[str]:
        """``sent`` once it has ``count`` entries (the last send may still be returning)."""
        deadline = time.monotonic() + timeout
        while len(self.sent) < count and time.monotonic() < deadline:
            time.sleep(0.005)
        return list(self.sent)

    def serve(self, sock: socket.socket, rec: ConnRecord) -> None:
        buf = bytearray()
        while True:
            head = self._read_head(sock, rec, buf)
            if head is None:
                return
            method, target, length = head
            if method == "GET" and target.startswith("/download/"):
                self._download(sock, int(target.rsplit("/", 1)[1]))
            elif method == "POST" and target == "/upload":
                digest = hashlib.sha256()
                for piece in self._body(sock, rec, buf, length):
                    digest.update(piece)
                answer = json.dumps({"received": length, "sha256": digest.hexdigest()}).encode()
                sock.sendall(
                    b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(answer) + answer
                )
            elif method == "POST" and target == "/echo":
                sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % length)
                for piece in self._body(sock, rec, buf, length):
                    sock.sendall(piece)
            else:
                sock.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
            rec.requests += 1

    def _read_head(
        self, sock: socket.socket, rec: ConnRecord, buf: bytearray
    ) -> tuple[str, str, int] | None:
        while b"\r\n\r\n" not in buf:
            if len(buf) > CHUNK:
                return None
            data = self.recv(sock, rec)
            if not data:
                return None
            buf += data
        end = buf.index(b"\r\n\r\n")
        lines = bytes(buf[:end]).decode("latin-1").split("\r\n")
        del buf[: end + 4]
        method, target, _ = lines[0].split(" ", 2)
        length = 0
        for line in lines[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length":
                length = int(value.strip())
        return method, target, length

    def _body(
        self, sock: socket.socket, rec: ConnRecord, buf: bytearray, length: int
    ) -> Iterator[bytes]:
        take = min(length, len(buf))
        if take:
            yield bytes(buf[:take])
            del buf[:take]
        left = length - take
        while left:
            data = self.recv(sock, rec, min(left, CHUNK * 4))
            if not data:
                raise ConnectionError("body cut short")
            left -= len(data)
            yield data

    def _download(self, sock: socket.socket, size: int) -> None:
        sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
        digest = hashlib.sha256()
        for block in random_blocks(size, size):
            digest.update(block)
            sock.sendall(block)
        self.sent.append(digest.hexdigest())


# -- a raw HTTP/1.1 client ------------------------------------------------------------


@dataclass
class Response:
    status: int
    reason: str
    #: (lower-cased name, value) in order
    headers: list[tuple[str, str]]
    body: bytes
    #: statuses of the 1xx answers that came first
    interim: list[int] = field(default_factory=list)

    def header(self, name: str) -> str | None:
        values = [v for n, v in self.headers if n == name.lower()]
        assert len(values) <= 1, f"{name} appears {len(values)} times"
        return values[0] if values else None

    def json(self) -> Any:
        return json.loads(self.body)


class RawClient:
    """An HTTP/1.1 client on one plain socket: it sends exactly the bytes it is given."""

    def __init__(self, port: int, host: str = "127.0.0.1", timeout: float = IO_TIMEOUT) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = bytearray()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def shut_write(self) -> None:
        self.sock.shutdown(socket.SHUT_WR)

    def reset(self) -> None:
        """Close with a RST (SO_LINGER 0) instead of a FIN."""
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()

    def _fill(self) -> bool:
        data = self.sock.recv(CHUNK * 4)
        self.buf += data
        return bool(data)

    def _line(self) -> bytes:
        while b"\r\n" not in self.buf:
            if not self._fill():
                raise ConnectionError(f"closed inside a line; have {bytes(self.buf[:200])!r}")
        end = self.buf.index(b"\r\n")
        line = bytes(self.buf[:end])
        del self.buf[: end + 2]
        return line

    def _exactly(self, n: int) -> bytes:
        while len(self.buf) < n:
            if not self._fill():
                raise ConnectionError(f"closed after {len(self.buf)} of {n} body bytes")
        data = bytes(self.buf[:n])
        del self.buf[:n]
        return data

    def read_head(self) -> tuple[int, str, list[tuple[str, str]]]:
        line = self._line().decode("latin-1")
        m = re.fullmatch(r"HTTP/1\.[01] (\d{3}) ?(.*)", line)
        assert m is not None, f"not a status line: {line!r}"
        headers = []
        while line := self._line().decode("latin-1"):
            name, _, value = line.partition(":")
            headers.append((name.strip().lower(), value.strip()))
        return int(m[1]), m[2], headers

    def read_response(self, method: str = "GET") -> Response:
        """One whole response (1xx answers before it are collected in ``interim``)."""
        interim: list[int] = []
        while True:
            status, reason, headers = self.read_head()
            if 100 <= status < 200 and status != 101:
                interim.append(status)
                continue
            break
        fields = {n: v for n, v in headers}
        if status in (101, 204, 304) or method == "HEAD":
            body = b""
        elif "transfer-encoding" in fields:
            body = self._chunked()
        elif "content-length" in fields:
            body = self._exactly(int(fields["content-length"]))
        else:
            body = self.read_to_eof()
        return Response(status, reason, headers, body, interim)

    def read_continue(self) -> int:
        """The status of the next head, which should be an interim ``100 Continue``."""
        status, _, _ = self.read_head()
        return status

    def _chunked(self) -> bytes:
        body = bytearray()
        while True:
            size = int(self._line().split(b";")[0], 16)
            if size == 0:
                while self._line():
                    pass
                return bytes(body)
            body += self._exactly(size)
            assert self._line() == b""

    def read_to_eof(self, limit: int = 1 << 27) -> bytes:
        while len(self.buf) < limit and self._fill():
            pass
        data = bytes(self.buf)
        self.buf.clear()
        return data

    def closed_by_peer(self) -> bool:
        """True when the peer has closed (FIN) and nothing more is unread."""
        return not self.buf and not self._fill()


class WsClient:
    """A WebSocket client (wsproto) over a ``RawClient`` that has read every earlier response."""

    def __init__(self, c: RawClient, host: str, target: str = "/ws") -> None:
        assert not c.buf, "unread bytes before the WebSocket handshake"
        self.c = c
        self.ws = WSConnection(ConnectionType.CLIENT)
        self.queue: deque[Event] = deque()
        c.send(self.ws.send(WsRequest(host=host, target=target)))
        event = self._event()
        assert isinstance(event, AcceptConnection), event

    def _event(self) -> Event:
        while not self.queue:
            data = self.c.sock.recv(CHUNK)
            self.ws.receive_data(data or None)
            self.queue.extend(self.ws.events())
            if not data and not self.queue:
                raise ConnectionError("closed without a WebSocket event")
        return self.queue.popleft()

    def echo(self, message: str | bytes) -> str | bytes:
        """Send one message; the whole message that comes back."""
        out = TextMessage(message) if isinstance(message, str) else BytesMessage(message)
        self.c.send(self.ws.send(out))
        parts: list[Any] = []
        while True:
            event = self._event()
            assert isinstance(event, Message), event
            parts.append(event.data)
            if event.message_finished:
                return ("" if isinstance(event, TextMessage) else b"").join(parts)

    def close(self) -> None:
        """Close handshake: send Close, expect Close back."""
        self.c.send(self.ws.send(CloseConnection(code=1000)))
        event = self._event()
        assert isinstance(event, CloseConnection), event


def get(host: str, target: str = "/", extra: str = "") -> bytes:
    """A minimal GET request head."""
    return f"GET {target} HTTP/1.1\r\nHost: {host}\r\n{extra}\r\n".encode()


def post(host: str, body: bytes, target: str = "/", chunked: bool = False) -> bytes:
    """A POST with ``body`` framed by Content-Length or as chunks (several, odd sizes)."""
    if not chunked:
        return (
            f"POST {target} HTTP/1.1\r\nHost: {host}\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode() + body
    return (
        f"POST {target} HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: chunked\r\n\r\n"
    ).encode() + chunk(body)


def as_forwarded(request: bytes, client: str = "127.0.0.1") -> bytes:
    """``request`` as a VM gets it from splice: its head ends with splice's X-Forwarded-*."""
    end = request.index(b"\r\n\r\n") + 2
    host = re.search(rb"\r\nhost:[ \t]*([^\r]*)", request[:end], re.IGNORECASE)
    assert host is not None
    extra = b"X-Forwarded-For: %s\r\nX-Forwarded-Proto: http\r\nX-Forwarded-Host: %s\r\n" % (
        client.encode(),
        host[1].strip().lower(),
    )
    return request[:end] + extra + request[end:]


def chunk(body: bytes) -> bytes:
    """``body`` as chunked coding: pieces of varying size, one with an extension."""
    out = bytearray()
    pos, size = 0, 1
    while pos < len(body):
        piece = body[pos : pos + size]
        ext = b";note=x" if pos == 0 else b""
        out += b"%x%s\r\n%s\r\n" % (len(piece), ext, piece)
        pos += len(piece)
        size = size * 7 + 3 if size < BLOCK else BLOCK + 13
    return bytes(out) + b"0\r\n\r\n"


def assert_shed_error(resp: Response, status: int, code: str) -> None:
    """An error page from splice: status, ``X-Shed-Error``, ``Connection: close``."""
    assert resp.status == status, (resp.status, resp.body[:300])
    assert resp.header("x-shed-error") == code
    assert resp.header("connection") == "close"
    assert resp.header("content-length") == str(len(resp.body))


# -- splice as a subprocess -------------------------------------------------------------


#: what the tests' configs say unless they choose ``workers``: splice's default is one
#: worker per core, and the tests expect one process (one PID, one access log, limits)
TEST_WORKERS = "workers = 1\n"


def toml_text(cfg: Mapping[str, Any]) -> str:
    """A config dict as TOML (inline tables throughout; enough for splice's keys).

    ``workers = 1`` unless ``cfg`` gives ``workers``; ``workers=None`` leaves the key
    out (splice's own default: one per core).
    """
    if "workers" not in cfg:
        cfg = {"workers": 1, **cfg}
    elif cfg["workers"] is None:
        cfg = {k: v for k, v in cfg.items() if k != "workers"}
    return "".join(f"{json.dumps(k)} = {_toml_value(v)}\n" for k, v in cfg.items())


def one_worker(text: str) -> str:
    """Config TOML text with ``workers = 1`` first, unless it gives ``workers`` itself."""
    return text if re.search(r"^\s*workers\s*=", text, re.MULTILINE) else TEST_WORKERS + text


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, Mapping):
        return "{" + ", ".join(f"{json.dumps(k)} = {_toml_value(x)}" for k, x in v.items()) + "}"
    raise TypeError(f"no TOML for {v!r}")


def shed(app: Upstream, **extra: Any) -> dict[str, Any]:
    """A ``[sheds.NAME]`` table whose default port is ``app``."""
    return {"address": app.host, "default_port": app.port, **extra}


def unused_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on right now (for "the VM is down")."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


_LISTENING = re.compile(r"listening on (\S+):(\d+)$")


class SpliceProcess:
    """``python -m splice serve -c CONFIG`` with its stderr collected line by line."""

    def __init__(self, cfg: Mapping[str, Any], workdir: Path, drain: float = 1.0) -> None:
        self.config_path = workdir / f"splice-{id(self):x}.toml"
        self.config_path.write_text(toml_text(cfg))
        self.lines: list[str] = []
        self._lock = threading.Lock()
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "splice",
                "serve",
                "-c",
                str(self.config_path),
                "--drain",
                str(drain),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            errors="replace",
        )
        self.pid = self.proc.pid
        self._reader = threading.Thread(target=self._read, name="splice-stderr", daemon=True)
        self._reader.start()
        self.addresses = self._wait_listening(len(cfg["listen"]))
        self.port = self.addresses[0][1]

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self._lock:
                self.lines.append(line.rstrip("\n"))

    def _wait_listening(self, n: int, timeout: float = 10.0) -> list[tuple[str, int]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                found = [m for line in self.lines if (m := _LISTENING.search(line))]
            if len(found) >= n:
                return [(m[1], int(m[2])) for m in found]
            if self.proc.poll() is not None:
                break
            time.sleep(0.01)
        self.stop()
        raise AssertionError(f"splice did not start:\n{self.stderr}")

    @property
    def stderr(self) -> str:
        with self._lock:
            return "\n".join(self.lines)

    def access_lines(self) -> list[str]:
        with self._lock:
            return [line for line in self.lines if line.startswith("access ")]

    def wait_access(self, count: int, timeout: float = 5.0) -> list[str]:
        """The access log once it has at least ``count`` lines (one per closed connection)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            lines = self.access_lines()
            if len(lines) >= count:
                return lines
            time.sleep(0.02)
        raise AssertionError(f"{len(self.access_lines())} access lines, expected {count}")

    def fd_count(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def client(self, timeout: float = 5.0) -> RawClient:
        return RawClient(self.port, timeout=timeout)

    def stop(self) -> int:
        """SIGTERM, wait (SIGKILL if it hangs); the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10.0)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5.0)
        self._reader.join(JOIN_TIMEOUT)
        assert self.proc.stderr is not None
        self.proc.stderr.close()
        return self.proc.returncode

    def problems(self) -> list[str]:
        """Log lines that mean splice itself failed."""
        bad = ("Traceback", "failed; closing", "abort failed", "ERROR")
        return [line for line in self.stderr.splitlines() if any(b in line for b in bad)]
