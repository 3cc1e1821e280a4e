"""Process control and /proc readings: the only numbers the suite trusts for CPU and memory.

Every process the suite starts goes through ``Managed`` so ``stop_all`` can end it by
its own PID (and the process group it leads) on any exit path.
"""

from __future__ import annotations

import contextlib
import os
import re
import resource
import signal
import socket
import subprocess
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")


class StartError(RuntimeError):
    """A process died or never opened its port; the message carries its log tail."""


class Managed:
    """A child process in its own session, logged to a file, stoppable by PID."""

    _live: list[Managed] = []

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log: Path,
        *,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log = log
        self._fh = log.open("ab")
        self.popen = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=self._fh,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=cwd,
            start_new_session=True,  # Ctrl-C reaches us, not them; we stop them in order
        )
        Managed._live.append(self)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, n: int = 2000) -> str:
        try:
            return self.log.read_bytes()[-n:].decode(errors="replace")
        except OSError:
            return ""

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM the group we created, then SIGKILL it if it lingers."""
        if self in Managed._live:
            Managed._live.remove(self)
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(timeout)
        # workers of a dead master may still hold the group: end them too
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        self._fh.close()

    @classmethod
    def stop_all(cls) -> None:
        for m in reversed(list(cls._live)):
            with contextlib.suppress(Exception):
                m.stop()


def free_ports(n: int) -> list[int]:
    """n distinct free loopback ports (held open together so none repeats)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def wait_port(port: int, proc: Managed | None = None, timeout: float = 20.0) -> None:
    """Poll-connect until the port accepts; fail fast if the process dies."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and not proc.alive():
            raise StartError(f"{proc.name} exited ({proc.popen.returncode}):\n{proc.log_tail()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    tail = proc.log_tail() if proc else ""
    raise StartError(f"port {port} not open after {timeout:.0f}s\n{tail}")


def raise_nofile() -> int:
    """Raise our soft RLIMIT_NOFILE to the hard limit (children inherit); return it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    for want in (1 << 20, 262144, 65536):
        if hard < want:
            with contextlib.suppress(ValueError, OSError):
                resource.setrlimit(resource.RLIMIT_NOFILE, (want, want))
                return want
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            stat = Path(f"/proc/{d}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        kids.setdefault(ppid, []).append(int(d))
    return kids


def tree(pids: Iterable[int]) -> list[int]:
    """The given PIDs and all their descendants (nginx master + worker, etc.)."""
    kids = _children()
    out: list[int] = []
    todo = list(pids)
    while todo:
        p = todo.pop()
        if p in out:
            continue
        out.append(p)
        todo.extend(kids.get(p, ()))
    return out


def cpu_seconds(pids: Iterable[int]) -> float:
    """utime+stime of every thread of the processes, in seconds (10 ms resolution)."""
    total = 0
    for p in pids:
        try:
            stat = Path(f"/proc/{p}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)
    return total / CLK_TCK


def children_cpu_seconds() -> float:
    """utime+stime of every child this process has waited for (a client run to its end)."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def machine_seconds() -> dict[str, float]:
    """CPU seconds of the whole machine since boot, from /proc/stat's "cpu" line.

    ``softirq`` (with ``irq``) is where loopback TCP does the receiving side's work,
    outside any process's time; ``idle`` (with ``iowait``) is what no process used;
    ``steal`` what the hypervisor gave to others.
    """
    with open("/proc/stat") as f:  # cpu user nice system idle iowait irq softirq steal
        idle, iowait, irq, softirq, steal = (int(x) for x in f.readline().split()[4:9])
    return {
        "softirq": (irq + softirq) / CLK_TCK,
        "idle": (idle + iowait) / CLK_TCK,
        "steal": steal / CLK_TCK,
    }


def rss_kib(pids: Iterable[int]) -> int:
    """Sum of VmRSS over the processes, KiB."""
    total = 0
    for p in pids:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
                    break
        except OSError:
            continue
    return total


def fd_count(pids: Iterable[int]) -> int:
    """Open file descriptors over the processes."""
    total = 0
    for p in pids:
        with contextlib.suppress(OSError):
            total += len(os.listdir(f"/proc/{p}/fd"))
    return total


def interpreter(pid: int) -> str:
    """Which Python a running process is, and whether libpython is linked in.

    The build matters more than the version: a distribution's interpreter (Debian's
    ``/usr/bin/python3``: static libpython, PGO + LTO) spends ~20 % less user CPU per
    request in splice than pyenv's default build (shared libpython, no PGO), bench
    README "Which Python".
    """
    try:
        exe = os.readlink(f"/proc/{pid}/exe")
        maps = Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return "unknown"
    shared = re.search(r"libpython[0-9.]*\.so", maps) is not None
    try:
        out = subprocess.run(
            [exe, "-c", "import sys; print(sys.version.split()[0])"],
            capture_output=True, text=True, timeout=10, check=False,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        out = ""
    return f"{exe} {out or '?'}, libpython {'shared' if shared else 'static'}"


def splice_build(pids: Iterable[int]) -> str:
    """``mypyc`` when a process of the tree has splice's compiled library mapped (a
    supervisor imports little; its workers do), else ``interpreted``."""
    for pid in pids:
        try:
            if "__mypyc." in Path(f"/proc/{pid}/maps").read_text():
                return "mypyc"
        except OSError:
            continue
    return "interpreted"


def run(argv: Sequence[str], timeout: float, **kw: object) -> subprocess.CompletedProcess[str]:
    """A bounded helper run (load generators): output captured, killed on timeout."""
    return subprocess.run(  # type: ignore[call-overload, no-any-return]
        list(argv),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        **kw,
    )
