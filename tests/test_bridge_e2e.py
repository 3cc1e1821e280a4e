"""End to end on a real bridge: the Firecracker topology, built in network namespaces.

A "host" namespace holds bridge ``shed-br0`` at 172.30.0.1/24; two "VM" namespaces sit
on veth pairs at 172.30.0.2 and 172.30.0.3, each running a web server that names
itself. The fake shed-server and splice run in the host namespace, so every packet
stays inside namespaces this test creates and removes (also on failure).
Needs root (CI runs as root).
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = [pytest.mark.root, pytest.mark.slow]

ROOT = Path(__file__).resolve().parent.parent
BASE = "srv.test"
VM_A, VM_B = "172.30.0.2", "172.30.0.3"
#: a VM's web server: answers every request with its own name and port
VM_SERVER = r"""
import http.server, sys
name, port = sys.argv[1], int(sys.argv[2])
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        body = f"{name}:{port}:{self.path}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
http.server.ThreadingHTTPServer(("0.0.0.0", port), H).serve_forever()
"""


def sh(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True, timeout=20)


class Topology:
    """Namespaces, bridge and veths; ``close`` removes all of them."""

    def __init__(self) -> None:
        tag = secrets.token_hex(3)
        self.host, self.a, self.b = f"sph{tag}", f"spa{tag}", f"spb{tag}"
        self.procs: list[subprocess.Popen[bytes]] = []
        self.made: list[str] = []

    def build(self) -> None:
        for ns in (self.host, self.a, self.b):
            sh("ip", "netns", "add", ns)
            self.made.append(ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh("ip", "-n", self.host, "link", "add", "shed-br0", "type", "bridge")
        sh("ip", "-n", self.host, "addr", "add", "172.30.0.1/24", "dev", "shed-br0")
        sh("ip", "-n", self.host, "link", "set", "shed-br0", "up")
        for ns, addr, veth in ((self.a, VM_A, "ve-a"), (self.b, VM_B, "ve-b")):
            sh("ip", "-n", self.host, "link", "add", veth, "type", "veth",
               "peer", "name", "eth0", "netns", ns)  # fmt: skip
            sh("ip", "-n", self.host, "link", "set", veth, "master", "shed-br0", "up")
            sh("ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", "eth0")
            sh("ip", "-n", ns, "link", "set", "eth0", "up")

    def run(self, ns: str, *args: str, stderr: int | None = None) -> subprocess.Popen[bytes]:
        p = subprocess.Popen(["ip", "netns", "exec", ns, *args], stderr=stderr)
        self.procs.append(p)
        return p

    def stop(self, p: subprocess.Popen[bytes]) -> None:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)

    def close(self) -> None:
        for p in self.procs:
            self.stop(p)
        for ns in self.made:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=20)

    def curl(self, host: str, port: int, path: str = "/") -> tuple[int, str, str]:
        """(status, X-Shed-Error or "", body) of a request made inside the host namespace."""
        out = subprocess.run(
            ["ip", "netns", "exec", self.host, "curl", "-s", "-m", "10", "-D", "-",
             "-H", f"Host: {host}", f"http://127.0.0.1:{port}{path}"],
            capture_output=True, timeout=20, check=False,
        ).stdout.decode("latin-1")  # fmt: skip
        head, _, body = out.partition("\r\n\r\n")
        lines = head.split("\r\n")
        status = int(lines[0].split()[1]) if lines and lines[0].startswith("HTTP/") else 0
        code = next((ln.split(":", 1)[1].strip() for ln in lines
                     if ln.lower().startswith("x-shed-error:")), "")  # fmt: skip
        return status, code, body


def wait_port(topo: Topology, ns: str, host: str, port: int) -> None:
    """Poll until something listens on host:port inside ``ns`` (bounded)."""
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        r = subprocess.run(
            ["ip", "netns", "exec", ns, sys.executable, "-c",
             f"import socket; socket.create_connection(({host!r}, {port}), 1).close()"],
            capture_output=True, timeout=10, check=False,
        )  # fmt: skip
        if r.returncode == 0:
            return
        time.sleep(0.1)
    raise AssertionError(f"nothing listens on {host}:{port} in {ns}")


@pytest.fixture
def topo() -> Iterator[Topology]:
    if os.geteuid() != 0:
        pytest.fail("this test builds network namespaces and must run as root (CI does)")
    t = Topology()
    try:
        t.build()
        yield t
    finally:
        t.close()


def start_vms(topo: Topology) -> dict[str, subprocess.Popen[bytes]]:
    procs = {
        "a8080": topo.run(topo.a, sys.executable, "-c", VM_SERVER, "vm-a", "8080"),
        "b8080": topo.run(topo.b, sys.executable, "-c", VM_SERVER, "vm-b", "8080"),
        "b9000": topo.run(topo.b, sys.executable, "-c", VM_SERVER, "vm-b", "9000"),
    }
    wait_port(topo, topo.host, VM_A, 8080)
    wait_port(topo, topo.host, VM_B, 8080)
    wait_port(topo, topo.host, VM_B, 9000)
    return procs


def start_fake(topo: Topology, *status: str) -> subprocess.Popen[bytes]:
    args = ["--port", "8080", "--shed", f"vm-a={VM_A}", "--shed", f"vm-b={VM_B}"]
    for s in status:
        args += ["--status", s]
    p = topo.run(topo.host, sys.executable, str(ROOT / "scripts" / "fake_shed_server.py"), *args)
    wait_port(topo, topo.host, "127.0.0.1", 8080)
    return p


def start_splice(topo: Topology, tmp: Path, port: int, dial: str) -> subprocess.Popen[bytes]:
    cfg = tmp / f"splice-{port}.toml"
    # a retire (waiting for an upstream's earlier answers) longer than curl's -m 10: an
    # error must never wait on one where no answer is owed (the Connect API's refusal)
    cfg.write_text(
        "workers = 1\nretire_timeout = 30\n"
        f'domains = ["{BASE}"]\n'
        f'[[listen]]\naddress = "127.0.0.1:{port}"\n'
        f'[dial]\nmode = "{dial}"\n'
        '[resolver]\nchain = ["shed-api"]\nshed_server = "http://127.0.0.1:8080"\n'
        "ttl = 0.2\nnegative_ttl = 0.2\nstale = 0.5\n"
    )
    p = topo.run(topo.host, sys.executable, "-m", "splice", "serve", "-c", str(cfg),
                 stderr=subprocess.DEVNULL)  # fmt: skip
    wait_port(topo, topo.host, "127.0.0.1", port)
    return p


def eventually(topo: Topology, host: str, port: int, want: int) -> tuple[int, str, str]:
    """Retry until the status is ``want`` (caches expire), bounded to a few seconds."""
    deadline = time.monotonic() + 8
    got = topo.curl(host, port)
    while got[0] != want and time.monotonic() < deadline:
        time.sleep(0.2)
        got = topo.curl(host, port)
    return got


@pytest.mark.parametrize("dial", ["direct", "connect"])
def test_names_reach_the_right_vm_and_port_over_the_bridge(
    topo: Topology, tmp_path: Path, dial: str
) -> None:
    start_vms(topo)
    start_fake(topo)
    start_splice(topo, tmp_path, 8081, dial)
    assert topo.curl(f"vm-a.{BASE}", 8081, "/x") == (200, "", "vm-a:8080:/x")
    assert topo.curl(f"vm-b-9000.{BASE}", 8081) == (200, "", "vm-b:9000:/")
    assert topo.curl(f"9000-vm-b.{BASE}", 8081) == (200, "", "vm-b:9000:/")
    assert topo.curl(f"vm-b.{BASE}", 8081, "/port/9000/y") == (200, "", "vm-b:9000:/y")
    assert topo.curl(f"nosuch.{BASE}", 8081)[:2] == (404, "SHED_NOT_FOUND")


@pytest.mark.parametrize("dial", ["direct", "connect"])
def test_a_stopped_shed_gets_503_and_a_dead_server_502(
    topo: Topology, tmp_path: Path, dial: str
) -> None:
    vms = start_vms(topo)
    fake = start_fake(topo)
    start_splice(topo, tmp_path, 8081, dial)
    assert topo.curl(f"vm-a.{BASE}", 8081)[0] == 200
    topo.stop(vms["b9000"])
    status, code, _ = topo.curl(f"vm-b-9000.{BASE}", 8081)
    assert (status, code) == (502, "CONNECT_FAILED")
    topo.stop(fake)
    start_fake(topo, "vm-a=stopped")
    status, code, body = eventually(topo, f"vm-a.{BASE}", 8081, 503)
    assert (status, code) == (503, "SHED_NOT_RUNNING"), body
    assert "shed start vm-a" in body
    assert topo.curl(f"vm-b.{BASE}", 8081)[0] == 200


def test_the_topology_is_gone_afterwards(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.fail("this test builds network namespaces and must run as root (CI does)")
    t = Topology()
    try:
        t.build()
    finally:
        t.close()
    names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert not {t.host, t.a, t.b} & {line.split()[0] for line in names.splitlines() if line}
    assert json.loads("[]") == []  # the host's own interfaces were never touched
    assert socket.gethostname()
