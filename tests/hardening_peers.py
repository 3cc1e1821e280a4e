"""Peers for the hardening tests (issue 7): splice as a subprocess we can signal,
measure and starve, plus the odd upstreams those tests need. Loopback only.

- ``Splice``: ``python -m splice serve`` with any config, an optional fd limit
  (``nofile``: soft = hard, set before exec, so splice cannot raise it), SIGHUP
  reloads, SIGTERM drains, and process figures from ``/proc/PID`` (fds by kind, RSS).
- ``Fleet``: the splices a test started; ``close`` stops them by PID and reports
  what went wrong (exit status, tracebacks).
- ``Client``: ``RawClient`` bound to a chosen loopback source, or on ``::1``.
- ``Canary``: a listener that must never see a connection.
- ``Blackhole``: a listener whose accept queue is full, so further SYNs are dropped
  (the VM that does not answer, for ``connect_timeout``).
- ``SoakServer``/``StreamServer``/``KillableVM``: upstreams that hash what they get
  and send, stream a pattern forever, or can be SIGKILLed mid-response.

Every wait is bounded; every socket, thread and process is closed by its owner.
"""

from __future__ import annotations

import hashlib
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
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlsplit

from upstreams import IO_TIMEOUT, ConnRecord, RawClient, Upstream, one_worker, toml_text

T = TypeVar("T")

#: the base domain of every config here
DOMAIN = "test"
#: the longest any helper wait may take
WAIT = 10.0
#: a pool of pseudo-random bytes; bodies are slices of it (no per-request generation)
POOL_SIZE = 24 << 20
POOL = random.Random(7).randbytes(POOL_SIZE)
#: the largest body of the soak (and the largest slice of ``POOL`` anyone takes)
MAX_BODY = 8 << 20
#: a 1 MiB repeating pattern for streams too big to hash cheaply
PATTERN = bytes(range(256)) * 4096

_LISTENING = re.compile(r"listening on (\S+):(\d+)$")
_LAUNCH = (
    "import os, resource, sys; n = int(sys.argv[1]); "
    "resource.setrlimit(resource.RLIMIT_NOFILE, (n, n)); os.execv(sys.argv[2], sys.argv[2:])"
)
#: log lines that mean splice itself broke
BAD_LINES = ("Traceback", "failed; closing", "abort failed")


def config(
    sheds: Mapping[str, Any], listen: list[dict[str, Any]] | None = None, **settings: Any
) -> dict[str, Any]:
    """A full config dict: ``*.test`` on 127.0.0.1:<any> unless ``listen`` says otherwise."""
    return {
        "domains": [DOMAIN],
        "listen": listen or [{"address": "127.0.0.1:0", "mode": "http"}],
        **settings,
        "sheds": dict(sheds),
    }


def shed_at(up: Upstream, **extra: Any) -> dict[str, Any]:
    """A ``[sheds.NAME]`` table: ``up``'s address, its port as the default."""
    return {"address": up.host, "default_port": up.port, **extra}


def wait_until(
    pred: Callable[[], bool], what: str, timeout: float = WAIT, step: float = 0.02
) -> float:
    """Poll ``pred`` until true; the seconds it took. AssertionError naming ``what`` otherwise."""
    t0 = time.monotonic()
    deadline = t0 + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(step)
    return time.monotonic() - t0


# -- splice ------------------------------------------------------------------------------


class Splice:
    """``python -m splice serve -c CONFIG`` as a subprocess; stderr collected line by line."""

    def __init__(
        self,
        cfg: Mapping[str, Any],
        workdir: Path,
        *,
        drain: float | None = 1.0,
        nofile: int | None = None,
    ) -> None:
        self.config_path = workdir / f"splice-{id(self):x}.toml"
        self.config_path.write_text(toml_text(cfg))
        cmd = [sys.executable, "-m", "splice", "serve", "-c", str(self.config_path)]
        if drain is not None:
            cmd += ["--drain", str(drain)]
        if nofile is not None:
            cmd = [sys.executable, "-c", _LAUNCH, str(nofile), *cmd]
        self.lines: list[str] = []
        self._lock = threading.Lock()
        self.proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            errors="replace",
        )
        self.pid = self.proc.pid
        self.sigterm_at: float | None = None
        self._reader = threading.Thread(target=self._read, name="splice-stderr", daemon=True)
        self._reader.start()
        n = len(cfg["listen"])
        try:
            wait_until(
                lambda: len(self._listening()) >= n or self.proc.poll() is not None, "listen"
            )
        except AssertionError:
            pass
        found = self._listening()
        if len(found) < n:
            self.stop()
            raise AssertionError(f"splice did not start:\n{self.stderr}")
        self.addresses = found[:n]
        self.port = self.addresses[0][1]

    def _listening(self) -> list[tuple[str, int]]:
        with self._lock:
            return [(m[1], int(m[2])) for line in self.lines if (m := _LISTENING.search(line))]

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self._lock:
                self.lines.append(line.rstrip("\n"))

    # -- logs

    @property
    def stderr(self) -> str:
        with self._lock:
            return "\n".join(self.lines)

    def grep(self, needle: str) -> list[str]:
        with self._lock:
            return [line for line in self.lines if needle in line]

    def access_lines(self) -> list[str]:
        with self._lock:
            return [line for line in self.lines if line.startswith("access ")]

    def wait_access(self, count: int, timeout: float = WAIT) -> list[str]:
        wait_until(lambda: len(self.access_lines()) >= count, f"{count} access lines", timeout)
        return self.access_lines()

    def outcomes(self) -> Counter[str]:
        return Counter(line.rsplit(" ", 1)[1] for line in self.access_lines())

    def problems(self, allowed: tuple[str, ...] = ()) -> list[str]:
        return [
            line
            for line in self.stderr.splitlines()
            if any(b in line for b in BAD_LINES) and not any(a in line for a in allowed)
        ]

    def tracebacks(self, limit: int = 3) -> str:
        """The first ``limit`` tracebacks in the log, each with the line before it."""
        with self._lock:
            lines = list(self.lines)
        out: list[str] = []
        for i, line in enumerate(lines):
            if line.startswith("Traceback") and len(out) < limit:
                block = lines[max(0, i - 1) : i + 1]
                for rest in lines[i + 1 : i + 40]:
                    block.append(rest)
                    if not rest.startswith(" "):
                        break
                out.append("\n".join(block))
        return "\n\n".join(out)

    # -- signals

    def reload(self, cfg: Mapping[str, Any] | str) -> str:
        """Rewrite the config file, SIGHUP, and return the log line that answered it."""
        self.config_path.write_text(one_worker(cfg) if isinstance(cfg, str) else toml_text(cfg))
        before = len(self._answers())
        os.kill(self.pid, signal.SIGHUP)
        wait_until(lambda: len(self._answers()) > before, "the reload log line", WAIT)
        return self._answers()[before]

    def _answers(self) -> list[str]:
        with self._lock:
            return [ln for ln in self.lines if "reloaded " in ln or "reload of " in ln]

    def terminate(self) -> None:
        self.sigterm_at = time.monotonic()
        os.kill(self.pid, signal.SIGTERM)

    def wait_exit(self, timeout: float) -> int | None:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self) -> int:
        """SIGTERM, wait (SIGKILL after a timeout); the exit status. Idempotent."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(WAIT + 5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(WAIT)
        self._reader.join(WAIT)
        if self.proc.stderr is not None:
            self.proc.stderr.close()
        return self.proc.returncode

    # -- /proc

    def fds(self) -> Counter[str]:
        """Open fds by kind: ``socket``, ``pipe``, ``anon_inode``, ``file``."""
        kinds: Counter[str] = Counter()
        base = f"/proc/{self.pid}/fd"
        for name in os.listdir(base):
            try:
                target = os.readlink(f"{base}/{name}")
            except FileNotFoundError:
                continue
            kinds[target.split(":", 1)[0] if not target.startswith("/") else "file"] += 1
        return kinds

    def sockets(self) -> int:
        return self.fds()["socket"]

    def fd_total(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def rss_kib(self) -> int:
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        raise AssertionError("no VmRSS")

    def baseline_sockets(self, timeout: float = 5.0) -> int:
        """The socket fd count once it has held still for 0.5 s: a client that just
        closed may not have been reaped yet, and counting it would hide a later leak."""
        deadline = time.monotonic() + timeout
        last, since = self.sockets(), time.monotonic()
        while time.monotonic() < deadline and time.monotonic() - since < 0.5:
            time.sleep(0.05)
            now = self.sockets()
            if now != last:
                last, since = now, time.monotonic()
        return last

    def settled_sockets(self, target: int, timeout: float = 5.0) -> int:
        """The socket fd count once it is ``target`` or has stopped changing for 1 s."""
        deadline = time.monotonic() + timeout
        last, since = self.sockets(), time.monotonic()
        while time.monotonic() < deadline:
            now = self.sockets()
            if now == target:
                return now
            if now != last:
                last, since = now, time.monotonic()
            elif time.monotonic() - since > 1.0 and now < target:
                return now
            time.sleep(0.05)
        return last

    # -- clients

    def client(
        self, index: int = 0, source: str | None = None, timeout: float = IO_TIMEOUT
    ) -> Client:
        host, port = self.addresses[index]
        return Client(port, host=host, source=source, timeout=timeout)


class Fleet:
    """The splices one test started; ``close`` stops them and lists what went wrong."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.running: list[Splice] = []
        self.owned: list[Any] = []
        self.allowed: tuple[str, ...] = ()

    def keep(self, thing: T) -> T:
        """Close ``thing`` (an upstream, a socket...) at teardown, after the splices stop."""
        self.owned.append(thing)
        return thing

    def start(self, cfg: Mapping[str, Any], **kw: Any) -> Splice:
        s = Splice(cfg, self.workdir, **kw)
        self.running.append(s)
        return s

    def close(self) -> list[str]:
        errors = []
        for s in self.running:
            status = s.stop()
            if status != 0:
                errors.append(f"splice {s.pid} exited {status}")
            bad = s.problems(self.allowed)
            if bad:
                errors.append(f"splice {s.pid} logged {len(bad)} problem lines:\n{s.tracebacks()}")
        for thing in reversed(self.owned):
            thing.close()
        return errors


# -- clients ------------------------------------------------------------------------------


class Client(RawClient):
    """A ``RawClient`` from a chosen loopback source address, IPv4 or IPv6."""

    def __init__(
        self,
        port: int,
        host: str = "127.0.0.1",
        source: str | None = None,
        timeout: float = IO_TIMEOUT,
    ) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.settimeout(timeout)
            if source is not None:
                sock.bind((source, 0))
            sock.connect((host, port))
        except BaseException:
            sock.close()
            raise
        self.sock = sock
        self.buf = bytearray()


def rst_close(sock: socket.socket) -> None:
    """Close with a RST (SO_LINGER 0) instead of a FIN."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    sock.close()


def read_to_end(
    sock: socket.socket, timeout: float = WAIT, limit: int = 1 << 24
) -> tuple[bytes, str]:
    """Everything until the peer ends: (bytes, "eof" | "reset" | "timeout" | "limit")."""
    sock.settimeout(timeout)
    deadline = time.monotonic() + timeout
    out = bytearray()
    while len(out) < limit:
        if time.monotonic() > deadline:
            return bytes(out), "timeout"
        try:
            data = sock.recv(1 << 16)
        except (ConnectionResetError, BrokenPipeError):
            return bytes(out), "reset"
        except TimeoutError:
            return bytes(out), "timeout"
        if not data:
            return bytes(out), "eof"
        out += data
    return bytes(out), "limit"


def status_of(data: bytes) -> int | None:
    m = re.match(rb"HTTP/1\.[01] (\d{3})", data)
    return int(m[1]) if m else None


# -- upstreams --------------------------------------------------------------------------


class Canary(Upstream):
    """A listener nothing may reach: it only counts (and closes) what it accepts."""

    record_bytes = False

    def serve(self, sock: socket.socket, rec: ConnRecord) -> None:
        return


class Blackhole:
    """A listener with a full accept queue: the kernel drops further SYNs, so a dial
    to it neither succeeds nor fails until the dialler gives up."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.listener = socket.socket()
        self.listener.bind((host, 0))
        self.listener.listen(0)
        self.host = host
        self.port: int = self.listener.getsockname()[1]
        self.fillers: list[socket.socket] = []
        for _ in range(8):  # bounded: backlog 0 holds one; the next SYN is dropped
            s = socket.socket()
            s.settimeout(0.3)
            self.fillers.append(s)
            try:
                s.connect((host, self.port))
            except TimeoutError:
                return  # this one hangs in SYN_SENT: the queue is full
        raise AssertionError("could not fill the accept queue of a listen(0) socket")

    def close(self) -> None:
        for s in self.fillers:
            s.close()
        self.listener.close()


class _Reader:
    """Buffered reads of heads and bodies from a blocking socket."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = bytearray()

    def _fill(self) -> bool:
        data = self.sock.recv(1 << 18)
        self.buf += data
        return bool(data)

    def head(self) -> tuple[str, str, dict[str, str]] | None:
        while b"\r\n\r\n" not in self.buf:
            if len(self.buf) > 1 << 16 or not self._fill():
                return None
        end = self.buf.index(b"\r\n\r\n")
        lines = bytes(self.buf[:end]).decode("latin-1").split("\r\n")
        del self.buf[: end + 4]
        method, target, _ = lines[0].split(" ", 2)
        fields = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            fields[name.strip().lower()] = value.strip()
        return method, target, fields

    def line(self) -> bytes:
        while b"\r\n" not in self.buf:
            if not self._fill():
                raise ConnectionError("closed inside a line")
        end = self.buf.index(b"\r\n")
        out = bytes(self.buf[:end])
        del self.buf[: end + 2]
        return out

    def exactly(self, n: int) -> Iterator[bytes]:
        while n > 0:
            if not self.buf and not self._fill():
                raise ConnectionError(f"closed with {n} body bytes to go")
            piece = bytes(self.buf[:n])
            del self.buf[: len(piece)]
            n -= len(piece)
            yield piece

    def chunked(self) -> Iterator[bytes]:
        while True:
            size = int(self.line().split(b";")[0], 16)
            if size == 0:
                while self.line():
                    pass
                return
            yield from self.exactly(size)
            if self.line() != b"":
                raise ConnectionError("bad chunk end")


class SoakServer(Upstream):
    """``POST /?down=N&off=O``: hashes the request body (Content-Length or chunked), then
    answers N bytes of ``POOL`` from O, with ``X-Up-Len``/``X-Up-Sha256`` (what it got)
    and ``X-Down-Sha256`` (what it sends). ``Connection: close`` is honoured."""

    record_bytes = False

    def __init__(self, name: str, host: str = "127.0.0.1") -> None:
        super().__init__(name, host)
        # hundreds of connections a second: a short accept queue would drop SYNs and
        # turn into splice's connect timeouts (listen() again only resizes the queue)
        self._listener.listen(4096)

    def serve(self, sock: socket.socket, rec: ConnRecord) -> None:
        r = _Reader(sock)
        view = memoryview(POOL)
        while True:
            head = r.head()
            if head is None:
                return
            _, target, fields = head
            digest = hashlib.sha256()
            n = 0
            if fields.get("transfer-encoding", "").lower() == "chunked":
                body = r.chunked()
            else:
                body = r.exactly(int(fields.get("content-length", "0")))
            for piece in body:
                digest.update(piece)
                n += len(piece)
            q = parse_qs(urlsplit(target).query)
            size, off = int(q.get("down", ["0"])[0]), int(q.get("off", ["0"])[0])
            out = view[off : off + size]
            close = fields.get("connection", "").lower() == "close"
            sock.sendall(
                (
                    f"HTTP/1.1 200 OK\r\nContent-Length: {len(out)}\r\nX-Up-Len: {n}\r\n"
                    f"X-Up-Sha256: {digest.hexdigest()}\r\n"
                    f"X-Down-Sha256: {hashlib.sha256(out).hexdigest()}\r\n"
                    + ("Connection: close\r\n" if close else "")
                    + "\r\n"
                ).encode()
            )
            sock.sendall(out)
            rec.requests += 1
            if close:
                return


class StreamServer(Upstream):
    """``GET /stream/N``: N bytes of ``PATTERN``; ``sent[i]`` counts what connection i sent."""

    record_bytes = False

    def __init__(self, name: str, host: str = "127.0.0.1") -> None:
        self.sent: dict[int, int] = {}
        super().__init__(name, host)

    def serve(self, sock: socket.socket, rec: ConnRecord) -> None:
        head = _Reader(sock).head()
        if head is None:
            return
        size = int(head[1].rsplit("/", 1)[1])
        sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
        self.sent[rec.index] = 0
        view = memoryview(PATTERN)
        left = size
        while left > 0:
            n = min(left, len(PATTERN))
            sock.sendall(view[:n])
            self.sent[rec.index] += n
            left -= n


#: a VM in its own process, so a test can SIGKILL it: it answers one request with
#: Content-Length 64 MiB and streams it at about 8 MiB/s for at most 30 s
_VM_SCRIPT = r"""
import socket, sys, time
srv = socket.create_server(("127.0.0.1", 0))
print(srv.getsockname()[1], flush=True)
conn, _ = srv.accept()
buf = b""
while b"\r\n\r\n" not in buf:
    data = conn.recv(65536)
    if not data:
        sys.exit(0)
    buf += data
conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 67108864\r\n\r\n")
block = b"v" * 262144
end = time.monotonic() + 30
while time.monotonic() < end:
    conn.sendall(block)
    time.sleep(0.03)
"""


class KillableVM:
    """``_VM_SCRIPT`` as a subprocess on 127.0.0.1; ``kill`` SIGKILLs it by PID."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _VM_SCRIPT],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()  # the script prints its port first thing
        if not line.strip().isdigit():
            self.close()
            raise AssertionError("the VM process did not start")
        self.host = "127.0.0.1"
        self.port = int(line)

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(WAIT)

    def close(self) -> None:
        self.kill()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
