"""Helpers for the operations tests: splice with an admin listener, scraping, a fake shed-server.

``OpsSplice`` runs ``python -m splice [FLAGS] serve -c CONFIG`` and reads its ports from
the log (``listening on``/``admin on``, in text or JSON). ``admin`` does one HTTP request
on the admin port; ``scrape`` parses /metrics with prometheus_client's own parser.
``ShedServerThread`` runs the fake shed-server (``scripts/fake_shed_server.py``) on a
loop in a thread. Every wait is bounded; every process started is stopped by its PID.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from upstreams import toml_text

from scripts.fake_shed_server import FakeShedServer

#: longest a test waits for splice to start, answer or stop
WAIT = 15.0
_LISTENING = re.compile(r"listening on (\S+):(\d+)")
_ADMIN = re.compile(r"admin on http://(\S+):(\d+)/")


class OpsSplice:
    def __init__(
        self, cfg: Mapping[str, Any], workdir: Path, *flags: str, drain: float = 1.0
    ) -> None:
        self.config_path = workdir / "splice.toml"
        self.write(cfg)
        self.lines: list[str] = []
        self._lock = threading.Lock()
        cmd = [sys.executable, "-m", "splice", *flags, "serve", "-c", str(self.config_path)]
        self.proc = subprocess.Popen(
            [*cmd, "--drain", str(drain)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.pid = self.proc.pid
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.port = self.wait_for(_LISTENING)[1]
        self.admin_port = self.wait_for(_ADMIN)[1] if "admin" in cfg else 0

    def write(self, cfg: Mapping[str, Any]) -> None:
        self.config_path.write_text(toml_text(cfg))

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self._lock:
                self.lines.append(line.rstrip("\n"))

    @property
    def stderr(self) -> str:
        with self._lock:
            return "\n".join(self.lines)

    def messages(self) -> list[str]:
        """Each log line's message (the ``msg`` of a JSON line, else the line)."""
        with self._lock:
            lines = list(self.lines)
        out = []
        for line in lines:
            if line.startswith("{"):
                rec = json.loads(line)
                out.append(rec.get("msg", line))
            else:
                out.append(line)
        return out

    def wait_for(self, pattern: re.Pattern[str], timeout: float = WAIT) -> tuple[str, int]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for msg in self.messages():
                if m := pattern.search(msg):
                    return m[1], int(m[2])
            if self.proc.poll() is not None:
                break
            time.sleep(0.02)
        self.stop()
        raise AssertionError(f"no {pattern.pattern!r} in the log:\n{self.stderr}")

    def wait_log(self, text: str, count: int = 1, timeout: float = WAIT) -> None:
        """Return once ``count`` log lines contain ``text``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if sum(text in m for m in self.messages()) >= count:
                return
            time.sleep(0.02)
        raise AssertionError(f"{text!r} not logged:\n{self.stderr}")

    def admin(self, path: str, method: str = "GET") -> tuple[int, str]:
        return http(self.admin_port, path, method)

    def scrape(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        status, text = self.admin("/metrics")
        assert status == 200, text
        return parse_metrics(text)

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(WAIT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5.0)
        self._reader.join(5.0)
        assert self.proc.stderr is not None
        self.proc.stderr.close()
        return self.proc.returncode


def http(port: int, path: str, method: str = "GET", host: str = "127.0.0.1") -> tuple[int, str]:
    """One request with ``Connection: close``: (status, body)."""
    with socket.create_connection((host, port), timeout=WAIT) as s:
        request = f"{method} {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n"
        s.sendall(request.encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body.decode()


def parse_metrics(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """{(sample name, sorted labels): value} via prometheus_client's parser."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[s.name, tuple(sorted(s.labels.items()))] = s.value
    return out


def value(metrics: Mapping[tuple[str, Any], float], name: str, **labels: str) -> float:
    return metrics.get((name, tuple(sorted(labels.items()))), 0.0)


def children(pid: int) -> list[int]:
    """Processes whose parent is ``pid`` (from /proc)."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rpartition(")")[2].split()[1]) == pid:
                out.append(int(entry.name))
    return sorted(out)


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


class ShedServerThread:
    """The fake shed-server on its own event loop in a thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.fake = FakeShedServer()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self._call(self.fake.start())

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(WAIT)

    @property
    def url(self) -> str:
        return self.fake.base_url

    def add_shed(self, name: str, ip: str) -> None:
        self.loop.call_soon_threadsafe(lambda: self.fake.add_shed(name, ip_address=ip))

    def close(self) -> None:
        if self.loop.is_closed():
            return
        self._call(self.fake.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(WAIT)
        self.loop.close()
