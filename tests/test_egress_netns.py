"""The egress gateway end to end: a sandbox namespace whose only way out is splice.

Three namespaces this module creates and removes (also on failure)::

    sandbox 10.230.0.2 --veth-- 10.230.0.1 gateway 10.231.0.1 --veth-- 10.231.0.2 outside

The sandbox's default route points at the gateway; the gateway does not forward packets
(``ip_forward = 0``, no NAT), so nothing from the sandbox reaches "outside" except
through splice, which runs in the gateway with three listeners: ``forward`` on 3128 (the
sandbox's ``http_proxy``), ``egress-http`` on 8080 and ``egress-tls`` on 8443, the last
two fed by iptables REDIRECT rules for ports 80, 8081 and 443 arriving from the sandbox.
"outside" runs web servers on 80, 8000 and 8081, and HTTPS on 443 (trustme certificate
for mirror.test); they log every request. Every packet stays in these namespaces: the
only names used are ``[forward] hosts`` entries or refused before any lookup.
Needs root (CI runs as root).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from egress_peers import (
    CurlResult,
    EgressSplice,
    Namespaces,
    curl,
    egress_certs,
    error_text,
    sh,
)
from tls_peers import Certs

from splice.ca import init_ca

pytestmark = [pytest.mark.root, pytest.mark.slow]

GATEWAY, SANDBOX = "10.230.0.1", "10.230.0.2"
GATEWAY_OUT, OUTSIDE = "10.231.0.1", "10.231.0.2"
PROXY = f"http://{GATEWAY}:3128"

#: the outside web servers: every GET is logged as a JSON line; /file names the port
OUTSIDE_SERVER = r"""
import http.server, json, ssl, sys, threading, time
log_path, ready_path, cert, key, host = sys.argv[1:6]
lock = threading.Lock()
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        port = self.server.server_address[1]
        seen = {"port": port, "peer": self.client_address[0], "path": self.path,
                "host": self.headers.get("Host")}
        with lock, open(log_path, "a") as f:
            f.write(json.dumps(seen) + "\n")
        ok = self.path == "/file"
        body = (f"outside file via port {port}\n" * 64).encode() if ok else b"no\n"
        self.send_response(200 if ok else 404)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
class Tls(http.server.ThreadingHTTPServer):
    def finish_request(self, request, address):
        request.settimeout(10)
        with ctx.wrap_socket(request, server_side=True) as tls:
            self.RequestHandlerClass(tls, address, self)
    def handle_error(self, request, address):
        pass
servers = [http.server.ThreadingHTTPServer((host, p), H) for p in (80, 8000, 8081)]
servers.append(Tls((host, 443), H))
for s in servers:
    threading.Thread(target=s.serve_forever, daemon=True).start()
open(ready_path, "w").close()
time.sleep(600)
"""


def file_body(port: int) -> bytes:
    return f"outside file via port {port}\n".encode() * 64


@dataclass
class Net:
    nss: Namespaces
    sandbox: str
    gateway: str
    outside: str
    certs: Certs
    splice: EgressSplice
    log: Path

    def curl(self, *args: str, proxy: bool = False) -> CurlResult:
        env = {"http_proxy": PROXY, "https_proxy": PROXY} if proxy else {}
        return curl("--connect-timeout", "3", *args, prefix=self.nss.prefix(self.sandbox),
                    env=env)  # fmt: skip

    def seen(self) -> list[dict[str, Any]]:
        """Every request the outside servers logged so far."""
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines()]


def _iptables() -> str:
    """An iptables binary with a usable nat table; installs the package if there is none."""
    if shutil.which("iptables") is None and shutil.which("iptables-legacy") is None:
        subprocess.run(["apt-get", "install", "-y", "iptables"], capture_output=True,
                       timeout=300, check=True)  # fmt: skip
    return next(b for b in ("iptables", "iptables-legacy") if shutil.which(b) is not None)


def _redirect(nss: Namespaces, gateway: str, rules: list[tuple[int, int]]) -> None:
    """REDIRECT each (dport -> port) arriving from the sandbox, iptables-legacy as a fallback."""
    errors = []
    for binary in dict.fromkeys([_iptables(), "iptables-legacy"]):
        if shutil.which(binary) is None:
            continue
        try:
            for dport, to in rules:
                match = ["-i", "vsb", "-p", "tcp", "--dport", str(dport)]
                action = ["-j", "REDIRECT", "--to-ports", str(to)]
                sh(*nss.prefix(gateway), binary, "-t", "nat", "-A", "PREROUTING", *match, *action)
            return
        except subprocess.CalledProcessError as e:
            errors.append(f"{binary}: {e.stderr.decode(errors='replace')}")
            sh(*nss.prefix(gateway), binary, "-t", "nat", "-F", "PREROUTING")
    raise AssertionError("no iptables could add a REDIRECT rule:\n" + "\n".join(errors))


def _build(nss: Namespaces, tmp: Path) -> Net:
    sandbox, gateway, outside, certs, log, _ = _topology(nss, tmp)
    cfg = {
        "listen": [
            {"address": f"{GATEWAY}:3128", "mode": "forward"},
            {"address": f"{GATEWAY}:8080", "mode": "egress-http"},
            {"address": f"{GATEWAY}:8443", "mode": "egress-tls"},
        ],
        "forward": {
            # the literal is allowed by name so that what refuses it is the address check
            "allow": ["mirror.test", OUTSIDE],
            "ports": [80, 443, 8081],
            "hosts": {"mirror.test": OUTSIDE},
        },
    }
    splice = EgressSplice(cfg, tmp, prefix=nss.prefix(gateway), name="gateway")
    return Net(nss, sandbox, gateway, outside, certs, splice, log)


def _topology(
    nss: Namespaces, tmp: Path
) -> tuple[str, str, str, Certs, Path, subprocess.Popen[bytes]]:
    """The three namespaces, the REDIRECT rules and the outside servers (running)."""
    sandbox, gateway, outside = nss.add("sb"), nss.add("gw"), nss.add("out")
    nss.link(gateway, "vsb", f"{GATEWAY}/24", sandbox, "eth0", f"{SANDBOX}/24")
    nss.link(gateway, "vout", f"{GATEWAY_OUT}/24", outside, "eth0", f"{OUTSIDE}/24")
    sh("ip", "-n", sandbox, "route", "add", "default", "via", GATEWAY)
    # the gateway must not route between its veths: splice is the only way across
    sh(*nss.prefix(gateway), "sh", "-c", "echo 0 > /proc/sys/net/ipv4/ip_forward")
    forwarding = nss.run(gateway, "cat", "/proc/sys/net/ipv4/ip_forward").stdout.strip()
    assert forwarding == b"0"
    _redirect(nss, gateway, [(80, 8080), (8081, 8080), (443, 8443)])

    certs = egress_certs(tmp, "mirror.test", "denied.test")
    log, ready = tmp / "outside.jsonl", tmp / "outside.ready"
    server = nss.popen(outside, sys.executable, "-c", OUTSIDE_SERVER, str(log), str(ready),
                       str(certs.cert_pem), str(certs.key_pem), OUTSIDE)  # fmt: skip
    deadline = time.monotonic() + 15
    while not ready.exists():
        assert time.monotonic() < deadline, "the outside servers did not start"
        time.sleep(0.05)
    return sandbox, gateway, outside, certs, log, server


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Net]:
    if os.geteuid() != 0:
        pytest.fail("this test builds network namespaces and must run as root (CI does)")
    nss = Namespaces()
    built: Net | None = None
    try:
        built = _build(nss, tmp_path_factory.mktemp("egress-netns"))
        yield built
    finally:
        problems = ""
        if built is not None:
            status = built.splice.stop()
            if status != 0 or built.splice.problems():
                problems = f"splice exited {status}:\n{built.splice.stderr}"
        nss.close()
        assert nss.remaining() == [], "namespaces left behind"
        assert not problems, problems


def _refused(r: CurlResult, status: int, code: str, needle: str) -> None:
    assert r.status == status, (r.returncode, r.stderr, r.body[:300])
    assert r.header("x-shed-error") == code
    assert needle in error_text(r.body)


def test_the_sandbox_gets_a_file_from_outside_through_splice_as_its_http_proxy(net: Net) -> None:
    r = net.curl("http://mirror.test/file", proxy=True)
    assert (r.returncode, r.status) == (0, 200), r.stderr
    assert r.body == file_body(80)
    last = net.seen()[-1]
    assert last == {"port": 80, "peer": GATEWAY_OUT, "path": "/file", "host": "mirror.test"}


def test_the_sandbox_gets_a_file_over_https_through_a_connect_tunnel(net: Net) -> None:
    r = net.curl("--cacert", str(net.certs.ca_pem), "https://mirror.test/file", proxy=True)
    assert (r.returncode, r.transfers, r.status) == (0, [(200, 1)], 200), r.stderr
    assert r.body == file_body(443)
    assert net.seen()[-1]["peer"] == GATEWAY_OUT


def test_a_redirected_request_is_relayed_transparently_by_egress_http(net: Net) -> None:
    r = net.curl("--resolve", f"mirror.test:80:{OUTSIDE}", "http://mirror.test/file")
    assert (r.returncode, r.status) == (0, 200), r.stderr
    assert r.body == file_body(80)
    last = net.seen()[-1]
    assert last == {"port": 80, "peer": GATEWAY_OUT, "path": "/file", "host": "mirror.test"}
    net.splice.wait_line("port=80 ")


def test_the_port_comes_from_the_original_destination_not_the_host_field(net: Net) -> None:
    # the Host field names no port (80), and another one (9999, not allowed) below: only
    # SO_ORIGINAL_DST knows the sandbox dialled 8081
    for host in ("mirror.test", "mirror.test:9999"):
        r = net.curl("--resolve", f"mirror.test:8081:{OUTSIDE}", "-H", f"Host: {host}",
                     "http://mirror.test:8081/file")  # fmt: skip
        assert (r.returncode, r.status) == (0, 200), (r.stderr, r.body[:300])
        assert r.body == file_body(8081)
        assert net.seen()[-1]["port"] == 8081
    net.splice.wait_line("port=8081 ")


def test_redirected_tls_is_spliced_on_its_sni(net: Net) -> None:
    r = net.curl("--cacert", str(net.certs.ca_pem), "--resolve", f"mirror.test:443:{OUTSIDE}",
                 "https://mirror.test/file")  # fmt: skip
    assert (r.returncode, r.status) == (0, 200), r.stderr
    assert r.body == file_body(443)
    assert net.seen()[-1] == {
        "port": 443, "peer": GATEWAY_OUT, "path": "/file", "host": "mirror.test"
    }  # fmt: skip


def test_a_denied_name_is_refused_in_every_mode_and_never_reaches_outside(net: Net) -> None:
    before = len(net.seen())
    _refused(net.curl("http://denied.test/file", proxy=True), 403, "DESTINATION_DENIED",
             "rule 'default'")  # fmt: skip
    _refused(net.curl("--resolve", f"denied.test:80:{OUTSIDE}", "http://denied.test/file"),
             403, "DESTINATION_DENIED", "rule 'default'")  # fmt: skip
    r = net.curl("--cacert", str(net.certs.ca_pem), "--resolve", f"denied.test:443:{OUTSIDE}",
                 "https://denied.test/file")  # fmt: skip
    assert r.returncode == 35, r.stderr  # the TLS handshake failed
    assert "access denied" in r.stderr.lower()
    r = net.curl("--cacert", str(net.certs.ca_pem), "https://denied.test/file", proxy=True)
    assert r.transfers == [(403, 1)]
    assert r.header("x-shed-error") == "DESTINATION_DENIED"
    assert len(net.seen()) == before


def test_a_private_address_is_refused_in_every_mode_and_never_reaches_outside(net: Net) -> None:
    before = len(net.seen())
    needle = f"{OUTSIDE} (private)"
    _refused(net.curl(f"http://{OUTSIDE}/file", proxy=True), 403, "PRIVATE_ADDRESS", needle)
    _refused(net.curl(f"http://{OUTSIDE}/file"), 403, "PRIVATE_ADDRESS", needle)
    r = net.curl(f"https://{OUTSIDE}/file", "-k", proxy=True)
    assert r.transfers == [(403, 1)]
    assert r.header("x-shed-error") == "PRIVATE_ADDRESS"
    assert len(net.seen()) == before


def test_the_sandbox_has_no_other_way_out(net: Net) -> None:
    # port 8000 is served outside but neither redirected nor forwarded
    r = net.curl("--connect-timeout", "1", f"http://{OUTSIDE}:8000/file")
    assert r.returncode in (7, 28), (r.returncode, r.status)  # could not connect / timed out
    assert r.status == 0
    # the server is there: the gateway itself reaches it
    here = curl(f"http://{OUTSIDE}:8000/file", prefix=net.nss.prefix(net.gateway))
    assert (here.status, here.body) == (200, file_body(8000))
    assert all(s["peer"] == GATEWAY_OUT for s in net.seen())
    # and splice refuses to carry it: 8000 is not a listed port
    _refused(net.curl("http://mirror.test:8000/file", proxy=True), 403, "PORT_DENIED",
             "rule 'ports'")  # fmt: skip


def test_a_sandbox_records_every_egress_path_then_replays_them_with_outside_gone(
    tmp_path: Path,
) -> None:
    """The record/replay store (issue 11) in the same topology: a first sandbox run
    records through the proxy (http, intercepted CONNECT) and through REDIRECT
    (egress-http, intercepted egress-tls); the outside servers are killed; a second run,
    splice now in ``replay``, gets the same bytes with no packet leaving the gateway."""
    if os.geteuid() != 0:
        pytest.fail("this test builds network namespaces and must run as root (CI does)")
    nss = Namespaces()
    splice: EgressSplice | None = None
    try:
        sandbox, gateway, _, certs, log, server = _topology(nss, tmp_path)
        splice_ca = init_ca(tmp_path / "ca")
        cfg: dict[str, Any] = {
            "listen": [
                {"address": f"{GATEWAY}:3128", "mode": "forward"},
                {"address": f"{GATEWAY}:8080", "mode": "egress-http"},
                {"address": f"{GATEWAY}:8443", "mode": "egress-tls"},
            ],
            "forward": {
                "allow": ["mirror.test"],
                "ports": [80, 443],
                "hosts": {"mirror.test": OUTSIDE},
                "trust_bundle": str(certs.ca_pem),
            },
        }
        store = {"path": str(tmp_path / "store"), "intercept_tls": True, "ca": str(tmp_path / "ca")}
        trust = ("--cacert", str(splice_ca))
        runs = [  # (curl arguments, through the proxy, the body outside sends)
            (("http://mirror.test/file",), True, file_body(80)),
            ((*trust, "https://mirror.test/file"), True, file_body(443)),
            (("--resolve", f"mirror.test:80:{OUTSIDE}", "http://mirror.test/file"), False,
             file_body(80)),
            ((*trust, "--resolve", f"mirror.test:443:{OUTSIDE}", "https://mirror.test/file"),
             False, file_body(443)),
        ]  # fmt: skip

        def sandbox_run(mode: str) -> list[CurlResult]:
            nonlocal splice
            cfg["forward"]["store"] = {**store, "mode": mode}
            splice = EgressSplice(cfg, tmp_path, prefix=nss.prefix(gateway), name=mode)
            env_proxy = {"http_proxy": PROXY, "https_proxy": PROXY}
            try:
                return [
                    curl("--connect-timeout", "3", *args, prefix=nss.prefix(sandbox),
                         env=env_proxy if proxy else {})
                    for args, proxy, _ in runs
                ]  # fmt: skip
            finally:
                assert splice.stop() == 0, splice.stderr
                splice = None

        for (args, _, body), r in zip(runs, sandbox_run("record"), strict=True):
            assert (r.returncode, r.status, r.body) == (0, 200, body), (args, r.stderr)
        recorded = len(log.read_text().splitlines())
        assert recorded == 4
        server.kill()
        server.wait(10)
        for (args, _, body), r in zip(runs, sandbox_run("replay"), strict=True):
            assert (r.returncode, r.status, r.body) == (0, 200, body), (args, r.stderr)
            assert r.header("x-splice-replay") == "hit", args
        assert len(log.read_text().splitlines()) == recorded
    finally:
        if splice is not None:
            splice.stop()
        nss.close()
        assert nss.remaining() == [], "namespaces left behind"
