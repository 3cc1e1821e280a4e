"""The egress gateway as a forward proxy, end to end on loopback with real clients.

Three splice processes serve the module, one per ``[forward]`` policy:

- ``strict``: an allow list (names mapped to 127.0.0.1 by ``[forward] hosts``), a deny
  entry and a port list; a ``forward`` and an ``egress-tls`` listener.
- ``open``: no allow list (any host on the listed ports), so what refuses an IP literal or
  a name resolving to loopback is the address check, never the name check.
- ``auth``: ``[forward] users`` with a hash made by ``splice passwd``.

The "VMs" are h11 echo apps, a bulk server and an HTTPS server (trustme certificate) on
127.0.0.1. curl, pip and a raw socket client are the sandboxes. Nothing leaves loopback:
the one test that needs a DNS failure runs in a namespace of its own with only ``lo``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from egress_peers import (
    EgressSplice,
    Namespaces,
    TlsFiles,
    build_wheel,
    clean_env,
    curl,
    egress_certs,
    error_text,
    proxy_hash,
    simple_index,
)
from tls_peers import Certs, handshake_error
from upstreams import (
    BulkServer,
    EchoApp,
    RawClient,
    Response,
    assert_shed_error,
    random_blocks,
    random_body,
    sha256_hex,
)

#: curl and pip are the sandboxes' clients
pytestmark = pytest.mark.peer

LOOP = "127.0.0.1"
PASSWORD = "correct horse"
#: PASSWORD as it goes in a proxy URL's userinfo
QUOTED = "correct%20horse"
#: 64 MiB each way
BIG = 64 << 20
#: names mapped to 127.0.0.1 by ``[forward] hosts``; the leaf certificate covers the TLS ones
NAMES = ("a.test", "b.test", "bulk.test", "secure.test", "pypi.test", "x.allowed.test")


@dataclass
class Gateway:
    tmp: Path
    certs: Certs
    a: EchoApp
    b: EchoApp
    bulk: BulkServer
    tls: TlsFiles
    strict: EgressSplice
    open: EgressSplice
    auth: EgressSplice
    auth_cfg: dict[str, Any]

    @property
    def proxy(self) -> str:
        return f"http://{LOOP}:{self.strict.port}"


def _listen(*modes: str) -> list[dict[str, str]]:
    return [{"address": f"{LOOP}:0", "mode": m} for m in modes]


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("egress")
    certs = egress_certs(tmp, "secure.test", "pypi.test")
    wheel = build_wheel(tmp, "tinypkg", "1.0")
    files = {"/hello": ("text/plain", b"hello over tls\n"), **simple_index("tinypkg", wheel)}
    made: list[Any] = []
    splices: list[EgressSplice] = []
    try:
        a, b, bulk = EchoApp("vm-a"), EchoApp("vm-b"), BulkServer("bulk")
        made += [a, b, bulk]
        tls = TlsFiles(certs, files)
        made.append(tls)
        hosts = dict.fromkeys([*NAMES, "bad.allowed.test"], LOOP)
        app_ports = [a.port, b.port, bulk.port, tls.port]
        strict = EgressSplice(
            {
                "listen": _listen("forward", "egress-tls"),
                "forward": {
                    "allow": ["a.test", "b.test", "bulk.test", "secure.test", "pypi.test",
                              "*.allowed.test"],
                    "deny": ["bad.allowed.test"],
                    "ports": [80, 443, *app_ports],
                    "hosts": hosts,
                },
            },
            tmp,
            name="strict",
        )  # fmt: skip
        splices.append(strict)
        opened = EgressSplice(
            {"listen": _listen("forward", "egress-tls"), "forward": {"ports": [443, *app_ports]}},
            tmp,
            name="open",
        )
        splices.append(opened)
        auth_cfg = {
            "listen": _listen("forward", "egress-tls"),
            "forward": {
                "allow": ["a.test", "secure.test"],
                "ports": [a.port, tls.port],  # not 443: egress-tls to a.test is PORT_DENIED
                "hosts": hosts,
                "users": {"alice": proxy_hash("alice", PASSWORD)},
            },
        }
        auth = EgressSplice(auth_cfg, tmp, name="auth")
        splices.append(auth)
        yield Gateway(tmp, certs, a, b, bulk, tls, strict, opened, auth, auth_cfg)
    finally:
        failures = []
        for s in splices:
            status = s.stop()
            if s.problems() or status != 0:
                failures.append(f"splice exited {status}:\n{s.stderr}")
        for peer in made:
            peer.close()
        assert not failures, "\n".join(failures)


def ask(port: int, request: bytes, method: str = "GET") -> Response:
    """One request on a new connection to ``port``; the whole response."""
    with RawClient(port) as c:
        c.send(request)
        return c.read_response(method)


def fields_of(echo: dict[str, Any]) -> list[tuple[str, str]]:
    return [(n.lower(), v) for n, v in echo["headers"]]


def assert_origin_form(received: bytes, line: str, host: str, kept: list[tuple[str, str]]) -> None:
    """``received`` is exactly one request: ``line``, one Host ``host``, the client's other
    fields ``kept`` in order, no proxy hop fields."""
    head, sep, rest = received.partition(b"\r\n\r\n")
    assert sep and rest == b"", received
    first, *lines = head.decode("latin-1").split("\r\n")
    assert first == line
    fields = [(n.strip().lower(), v.strip()) for n, _, v in (x.partition(":") for x in lines)]
    assert [v for n, v in fields if n == "host"] == [host]
    assert not {n for n, _ in fields} & {"proxy-connection", "proxy-authorization"}
    assert [f for f in fields if f in kept] == kept


def assert_refused(resp: Response, status: int, code: str, *needles: str) -> None:
    """A splice error page with ``code``, whose text names each of ``needles``."""
    assert_shed_error(resp, status, code)
    text = error_text(resp.body)
    for needle in needles:
        assert needle in text, (needle, text[:1500])


# -- real clients ---------------------------------------------------------------------------


def test_curl_fetches_a_page_through_the_proxy_in_origin_form(gw: Gateway) -> None:
    r = curl("-x", gw.proxy, f"http://a.test:{gw.a.port}/page?q=1")
    assert r.returncode == 0, r.stderr
    assert r.status == 200
    echo = json.loads(r.body)
    assert echo["name"] == "vm-a"
    assert echo["target"] == "/page?q=1"
    fields = fields_of(echo)
    assert [v for n, v in fields if n == "host"] == [f"a.test:{gw.a.port}"]
    names = {n for n, _ in fields}
    assert "proxy-connection" not in names  # curl sends Proxy-Connection: Keep-Alive
    assert "x-forwarded-for" not in names  # an egress proxy does not tell who its clients are


def test_curl_reaches_a_tls_server_through_a_connect_tunnel(gw: Gateway) -> None:
    r = curl("--cacert", str(gw.certs.ca_pem), "-x", gw.proxy,
             f"https://secure.test:{gw.tls.port}/hello")  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert r.transfers == [(200, 1)]  # the proxy's "Connection established"
    assert r.status == 200
    assert r.body == b"hello over tls\n"
    assert r.header("x-shed-error") is None
    assert any(s.path == "/hello" and s.host == f"secure.test:{gw.tls.port}"
               for s in gw.tls.requests())  # fmt: skip


def test_curl_tunnels_plain_http_with_connect_when_asked(gw: Gateway) -> None:
    r = curl("-p", "-x", gw.proxy, f"http://b.test:{gw.b.port}/tunnelled")
    assert r.returncode == 0, r.stderr
    assert (r.transfers, r.status) == ([(200, 1)], 200)
    echo = json.loads(r.body)
    assert (echo["name"], echo["target"]) == ("vm-b", "/tunnelled")


def test_curl_keeps_one_proxy_connection_for_two_destinations(gw: Gateway) -> None:
    out_a, out_b = gw.tmp / "ka-a.json", gw.tmp / "ka-b.json"
    r = curl("-x", gw.proxy, f"http://a.test:{gw.a.port}/first", "-o", str(out_a),
             f"http://b.test:{gw.b.port}/second", "-o", str(out_b), own_output=True)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert r.transfers == [(0, 1), (0, 0)]  # the second transfer reused the first connection
    first, second = json.loads(out_a.read_bytes()), json.loads(out_b.read_bytes())
    assert (first["name"], first["target"]) == ("vm-a", "/first")
    assert (second["name"], second["target"]) == ("vm-b", "/second")


def test_two_absolute_form_requests_on_one_connection_each_reach_only_their_vm(
    gw: Gateway,
) -> None:
    gw.a.sync()
    gw.b.sync()
    before_a, before_b = gw.a.accepted, gw.b.accepted
    first = (
        f"GET http://a.test:{gw.a.port}/one HTTP/1.1\r\nHost: a.test:{gw.a.port}\r\n"
        "Proxy-Connection: keep-alive\r\nProxy-Authorization: Basic YWxpY2U6c2VjcmV0\r\n"
        "User-Agent: raw\r\n\r\n"
    ).encode()
    second = (
        f"GET http://b.test:{gw.b.port}/two?x=y HTTP/1.1\r\nHost: b.test:{gw.b.port}\r\n"
        "Proxy-Connection: keep-alive\r\nProxy-Authorization: Basic Ym9iOnNlY3JldA==\r\n"
        "Accept: */*\r\n\r\n"
    ).encode()
    with RawClient(gw.strict.port) as c:
        c.send(first)
        r1 = c.read_response()
        c.send(second)
        r2 = c.read_response()
    assert (r1.status, r1.json()["name"]) == (200, "vm-a")
    assert (r2.status, r2.json()["name"]) == (200, "vm-b")
    gw.a.sync()
    gw.b.sync()
    assert (gw.a.accepted - before_a, gw.b.accepted - before_b) == (1, 1)
    assert_origin_form(
        bytes(gw.a.wait_done(before_a).received),
        "GET /one HTTP/1.1",
        f"a.test:{gw.a.port}",
        [("user-agent", "raw")],
    )
    assert_origin_form(
        bytes(gw.b.wait_done(before_b).received),
        "GET /two?x=y HTTP/1.1",
        f"b.test:{gw.b.port}",
        [("accept", "*/*")],
    )


def test_a_host_field_that_disagrees_with_the_url_is_ignored(gw: Gateway) -> None:
    request = (
        f"GET http://a.test:{gw.a.port}/mine HTTP/1.1\r\n"
        f"Host: b.test:{gw.b.port}\r\nConnection: close\r\n\r\n"
    ).encode()
    r = ask(gw.strict.port, request)
    assert r.status == 200
    echo = r.json()
    assert (echo["name"], echo["target"]) == ("vm-a", "/mine")
    assert [v for n, v in fields_of(echo) if n == "host"] == [f"a.test:{gw.a.port}"]


def test_a_url_naming_a_denied_host_is_refused_whatever_the_host_field_says(gw: Gateway) -> None:
    request = (
        f"GET http://denied.test:{gw.a.port}/ HTTP/1.1\r\nHost: a.test:{gw.a.port}\r\n\r\n"
    ).encode()
    assert_refused(ask(gw.strict.port, request), 403, "DESTINATION_DENIED", "denied.test")


def test_bytes_sent_right_after_the_connect_head_are_not_lost(gw: Gateway) -> None:
    authority = f"b.test:{gw.b.port}"
    inner = f"GET /early HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n".encode()
    with RawClient(gw.strict.port) as c:
        c.send(f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n".encode() + inner)
        status, _, _ = c.read_head()
        assert status == 200
        r = c.read_response()
    echo = r.json()
    assert (echo["name"], echo["target"]) == ("vm-b", "/early")


def test_pip_downloads_a_wheel_from_an_https_index_through_the_proxy(gw: Gateway) -> None:
    dest = gw.tmp / "pip-dest"
    home = gw.tmp / "pip-home"
    home.mkdir()
    port = gw.tls.port
    r = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--isolated", "--no-cache-dir",
         "--disable-pip-version-check", "--no-deps", "--only-binary", ":all:",
         "--retries", "0", "--timeout", "10",
         "--index-url", f"https://pypi.test:{port}/simple/",
         "--cert", str(gw.certs.ca_pem), "-d", str(dest), "tinypkg"],
        env=clean_env(home, https_proxy=gw.proxy, PYTHONNOUSERSITE="1"),
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    wheel = dest / "tinypkg-1.0-py3-none-any.whl"
    assert wheel.read_bytes() == gw.tls.files[f"/files/{wheel.name}"][1]
    paths = [s.path for s in gw.tls.requests() if s.host == f"pypi.test:{port}"]
    assert "/simple/tinypkg/" in paths
    assert f"/files/{wheel.name}" in paths
    # pypi.test is in no resolver: only the proxy's CONNECT can have reached the index
    gw.strict.wait_line(f"pypi.test:{port}")


# -- proxy users ----------------------------------------------------------------------------


def test_no_credentials_get_407_with_a_basic_challenge(gw: Gateway) -> None:
    r = curl("-x", f"http://{LOOP}:{gw.auth.port}", f"http://a.test:{gw.a.port}/")
    assert r.status == 407
    assert r.header("proxy-authenticate") == 'Basic realm="splice"'
    assert r.header("x-shed-error") == "PROXY_AUTH_REQUIRED"


def test_a_wrong_password_gets_407(gw: Gateway) -> None:
    r = curl("-x", f"http://alice:wrong@{LOOP}:{gw.auth.port}", f"http://a.test:{gw.a.port}/")
    assert r.status == 407
    assert r.header("proxy-authenticate") == 'Basic realm="splice"'
    r = curl("-x", f"http://mallory:{QUOTED}@{LOOP}:{gw.auth.port}",
             f"http://a.test:{gw.a.port}/")  # fmt: skip
    assert r.status == 407


def test_the_right_password_is_let_through_and_not_passed_on(gw: Gateway) -> None:
    proxy = f"http://alice:{QUOTED}@{LOOP}:{gw.auth.port}"
    r = curl("-x", proxy, f"http://a.test:{gw.a.port}/authed")
    assert r.status == 200, r.stderr
    echo = json.loads(r.body)
    assert echo["target"] == "/authed"
    assert "proxy-authorization" not in {n for n, _ in fields_of(echo)}
    r = curl("--cacert", str(gw.certs.ca_pem), "-x", proxy,
             f"https://secure.test:{gw.tls.port}/hello")  # fmt: skip
    assert (r.transfers, r.status, r.body) == ([(200, 1)], 200, b"hello over tls\n")


def test_the_access_line_names_mode_user_address_and_the_deciding_rule(gw: Gateway) -> None:
    proxy = f"http://alice:{QUOTED}@{LOOP}:{gw.auth.port}"
    r = curl("-x", proxy, f"http://a.test:{gw.a.port}/logged")
    assert r.status == 200, r.stderr
    line = gw.auth.wait_line(f"host=a.test:{gw.a.port} ")
    assert f" mode=forward user=alice dst={LOOP}:{gw.a.port} rule=a.test OK" in line, line
    r = curl("-x", f"http://{LOOP}:{gw.strict.port}", "http://bad.allowed.test/")
    assert r.status == 403
    line = gw.strict.wait_line("host=bad.allowed.test:80 ")
    assert line.endswith(" mode=forward user=- dst=- rule=bad.allowed.test DESTINATION_DENIED")
    ctx = gw.certs.client_context(check_hostname=False)
    ctx.verify_mode = ssl.CERT_NONE
    handshake_error(ctx, gw.strict.ports[1], "elsewhere.test")
    line = gw.strict.wait_line("host=elsewhere.test:443 ")
    assert line.endswith(" mode=egress-tls user=- dst=- rule=default DESTINATION_DENIED"), line


def test_each_destination_on_one_keep_alive_proxy_connection_gets_its_own_line(
    gw: Gateway,
) -> None:
    """An audit log names every destination: curl reuses one proxy connection for all
    three URLs (a.test, b.test, a.test again), and each run gets a line of its own."""
    a, b = f"a.test:{gw.a.port}", f"b.test:{gw.b.port}"
    mark = len(gw.strict.lines)
    r = curl("-x", gw.proxy, f"http://{a}/audit-1", f"http://{b}/audit-2", f"http://{a}/audit-3")
    assert r.status == 200, r.stderr
    deadline = time.monotonic() + 5.0
    while True:
        lines = [line for line in gw.strict.lines[mark:] if line.startswith("access ")]
        if len(lines) >= 3 or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    assert len({line.split()[1] for line in lines}) == 1, lines  # one client connection
    want = [
        f"host={a} shed=a.test port={gw.a.port} ",
        f"host={b} shed=b.test port={gw.b.port} ",
        f"host={a} shed=a.test port={gw.a.port} ",
    ]
    assert len(lines) == 3, lines
    for line, expect in zip(lines, want, strict=True):
        assert expect in line, line
        assert " mode=forward user=- " in line and line.endswith(" OK"), line
    assert f" dst={LOOP}:{gw.b.port} rule=b.test OK" in lines[1]


def test_a_body_sent_while_the_credentials_are_verified_arrives_intact(gw: Gateway) -> None:
    # a scheme spelt "basic" is a Proxy-Authorization value not verified before: the
    # request waits for scrypt in a thread while its body is already here
    token = base64.b64encode(f"alice:{PASSWORD}".encode()).decode()
    body = random_body(3, 1 << 20)
    authority = f"a.test:{gw.a.port}"
    request = (
        f"POST http://{authority}/upload HTTP/1.1\r\nHost: {authority}\r\n"
        f"Proxy-Authorization: basic {token}\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    r = ask(gw.auth.port, request + body, "POST")
    assert r.status == 200
    echo = r.json()
    assert (echo["body_len"], echo["body_sha256"]) == (len(body), sha256_hex(body))


def test_a_connect_without_credentials_gets_407(gw: Gateway) -> None:
    authority = f"secure.test:{gw.tls.port}"
    r = ask(gw.auth.port, f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n".encode())
    assert_shed_error(r, 407, "PROXY_AUTH_REQUIRED")
    assert r.header("proxy-authenticate") == 'Basic realm="splice"'


def test_a_changed_password_stops_working_once_the_config_is_reloaded(gw: Gateway) -> None:
    proxy = f"http://alice:{QUOTED}@{LOOP}:{gw.auth.port}"
    url = f"http://a.test:{gw.a.port}/before-reload"
    assert curl("-x", proxy, url).status == 200
    cfg = json.loads(json.dumps(gw.auth_cfg))
    cfg["forward"]["users"] = {"alice": proxy_hash("alice", "new-password")}
    gw.auth.reload(cfg)
    try:
        fresh = f"http://alice:new-password@{LOOP}:{gw.auth.port}"
        assert curl("-x", fresh, url).status == 200  # the reload is in force
        # the old password was verified (and cached) before the reload; it must not count now
        r = curl("-x", proxy, f"http://a.test:{gw.a.port}/after-reload")
        assert r.status == 407, "the old password still works after the reload"
    finally:
        gw.auth.reload(gw.auth_cfg)


def test_a_flood_of_bogus_credentials_queues_no_scrypt_in_front_of_a_real_login(
    gw: Gateway, tmp_path: Path
) -> None:
    """150 requests with made-up credentials once lined up 150 scrypt checks (~50 ms of
    CPU each) ahead of a real user's login, which waited seconds. Now the checks in
    flight are bounded: the flood is mostly refused at once (503 TOO_MANY_CONNECTIONS,
    Retry-After: 1), a user proved before is answered from the cache, and a new login is
    answered at once too (let through, or told to retry), then let through."""
    cfg = json.loads(json.dumps(gw.auth_cfg))
    cfg["listen"] = _listen("forward")
    splice = EgressSplice(cfg, tmp_path, name="flood")
    authority = f"a.test:{gw.a.port}"

    def request(scheme: str, credentials: str) -> bytes:
        token = base64.b64encode(credentials.encode()).decode()
        return (
            f"GET http://{authority}/ HTTP/1.1\r\nHost: {authority}\r\n"
            f"Proxy-Authorization: {scheme} {token}\r\n\r\n"
        ).encode()

    def timed(data: bytes) -> tuple[Response, float]:
        t0 = time.monotonic()
        return ask(splice.port, data), time.monotonic() - t0

    proved, fresh = request("Basic", f"alice:{PASSWORD}"), request("basic", f"alice:{PASSWORD}")
    try:
        assert ask(splice.port, proved).status == 200
        flood = [RawClient(splice.port) for _ in range(150)]
        try:
            for i, c in enumerate(flood):
                c.send(request("Basic", f"mallory:{i}"))
            cached, cached_s = timed(proved)
            new, new_s = timed(fresh)
            answers = [c.read_response() for c in flood]
        finally:
            for c in flood:
                c.close()
        assert cached.status == 200 and cached_s < 2.0, cached_s
        assert new.status in (200, 503) and new_s < 2.0, (new.status, new_s)
        refused = [a for a in answers if a.status == 503]
        assert len(refused) >= len(flood) // 2, [a.status for a in answers]
        for r in [*refused, new] if new.status == 503 else refused:
            assert_shed_error(r, 503, "TOO_MANY_CONNECTIONS")
            assert r.header("retry-after") == "1"
        assert {a.status for a in answers} <= {407, 503}
        assert ask(splice.port, fresh).status == 200  # the flood is over: let through
    finally:
        splice.stop()
    assert not splice.problems(), splice.stderr


# -- refusals ---------------------------------------------------------------------------------


def _get(authority: str, path: str = "/") -> bytes:
    return f"GET http://{authority}{path} HTTP/1.1\r\nHost: {authority}\r\n\r\n".encode()


def _connect(authority: str) -> bytes:
    return f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n".encode()


@pytest.mark.parametrize(
    ("request_for", "code", "needle"),
    [
        pytest.param(lambda p: _get(f"elsewhere.test:{p}"), "DESTINATION_DENIED",
                     "rule 'default'", id="not-in-allow"),
        pytest.param(lambda p: _get(f"bad.allowed.test:{p}"), "DESTINATION_DENIED",
                     "rule 'bad.allowed.test'", id="in-deny"),
        pytest.param(lambda p: _connect(f"bad.allowed.test:{p}"), "DESTINATION_DENIED",
                     "rule 'bad.allowed.test'", id="connect-in-deny"),
        pytest.param(lambda p: _get("a.test:8"), "PORT_DENIED", "rule 'ports'",
                     id="port-not-listed"),
        pytest.param(lambda p: _connect("a.test:8"), "PORT_DENIED", "rule 'ports'",
                     id="connect-port-not-listed"),
        pytest.param(lambda p: _connect("x.allowed.test:25"), "PORT_DENIED", "rule 'ports'",
                     id="connect-wildcard-port-not-listed"),
    ],
)  # fmt: skip
def test_the_strict_policy_refuses_with_a_page_naming_the_rule(
    gw: Gateway, request_for: Any, code: str, needle: str
) -> None:
    gw.a.sync()
    before = gw.a.accepted
    assert_refused(ask(gw.strict.port, request_for(gw.a.port)), 403, code, needle)
    gw.a.sync()
    assert gw.a.accepted == before


@pytest.mark.parametrize(
    "spelling", ["127.1", "0x7f.1", "2130706433", "0177.0.0.1", "[::1]", "[::ffff:127.0.0.1]"]
)
@pytest.mark.parametrize("method", ["GET", "CONNECT"])
def test_loopback_in_any_spelling_is_a_private_address(
    gw: Gateway, spelling: str, method: str
) -> None:
    gw.a.sync()
    before = gw.a.accepted
    authority = f"{spelling}:{gw.a.port}"
    request = _get(authority) if method == "GET" else _connect(authority)
    assert_refused(ask(gw.open.port, request), 403, "PRIVATE_ADDRESS", "(loopback)")
    gw.a.sync()
    assert gw.a.accepted == before, "a refused address was dialled"


def test_a_name_that_resolves_to_loopback_is_a_private_address(gw: Gateway) -> None:
    gw.a.sync()
    before = gw.a.accepted
    r = curl("-x", f"http://{LOOP}:{gw.open.port}", f"http://localhost:{gw.a.port}/")
    assert r.status == 403
    assert r.header("x-shed-error") == "PRIVATE_ADDRESS"
    assert "localhost resolves to a non-public address" in error_text(r.body)
    gw.a.sync()
    assert gw.a.accepted == before


@pytest.mark.root
def test_a_name_that_cannot_resolve_is_dns_failed_and_nothing_is_dialled(tmp_path: Path) -> None:
    """In a namespace with only ``lo``: the lookup cannot leave it, nothing else is reached."""
    if os.geteuid() != 0:
        pytest.fail("this test builds a network namespace and must run as root (CI does)")
    nss = Namespaces()
    try:
        ns = nss.add("dns")
        splice = EgressSplice(
            {"listen": _listen("forward"), "forward": {"ports": [80]}},
            tmp_path,
            prefix=nss.prefix(ns),
            name="dns",
        )
        try:
            proxy = f"http://{LOOP}:{splice.port}"
            for url in ("http://nonexistent.invalid/", "http://nonexistent.invalid:80/again"):
                r = curl("-x", proxy, url, prefix=nss.prefix(ns))
                assert r.status == 502, r.stderr
                assert r.header("x-shed-error") == "DNS_FAILED"
                body = error_text(r.body)
                assert "nonexistent.invalid could not be resolved" in body
            r = curl("-p", "-x", proxy, "http://nonexistent.invalid/", prefix=nss.prefix(ns))
            assert r.transfers == [(502, 1)]
            assert r.header("x-shed-error") == "DNS_FAILED"
        finally:
            status = splice.stop()
        assert status == 0 and not splice.problems(), splice.stderr
    finally:
        nss.close()
    assert nss.remaining() == []


def test_an_https_url_in_a_plain_request_is_refused_as_a_bad_request(gw: Gateway) -> None:
    authority = f"secure.test:{gw.tls.port}"
    request = f"GET https://{authority}/ HTTP/1.1\r\nHost: {authority}\r\n\r\n".encode()
    r = ask(gw.strict.port, request)
    assert_shed_error(r, 400, "BAD_REQUEST")


# -- big bodies -----------------------------------------------------------------------------


def test_64_mib_go_both_ways_through_the_proxy_intact(gw: Gateway) -> None:
    up = gw.tmp / "upload.bin"
    digest = hashlib.sha256()
    with open(up, "wb") as f:
        for block in random_blocks(7, BIG):
            digest.update(block)
            f.write(block)
    url = f"http://bulk.test:{gw.bulk.port}"
    r = curl("-x", gw.proxy, "-H", "Expect:", "--data-binary", f"@{up}", f"{url}/upload",
             timeout=60)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert json.loads(r.body) == {"received": BIG, "sha256": digest.hexdigest()}
    down = gw.tmp / "download.bin"
    r = curl("-x", gw.proxy, "-o", str(down), f"{url}/download/{BIG}", timeout=60,
             own_output=True)  # fmt: skip
    assert r.returncode == 0, r.stderr
    got = hashlib.sha256()
    with open(down, "rb") as f:
        while block := f.read(1 << 20):
            got.update(block)
    assert down.stat().st_size == BIG
    assert gw.bulk.wait_sent(1)[-1] == got.hexdigest()
    up.unlink()
    down.unlink()


# -- egress-tls ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("which", "sni"),
    [
        pytest.param("strict", "elsewhere.test", id="DESTINATION_DENIED-not-allowed"),
        pytest.param("strict", "bad.allowed.test", id="DESTINATION_DENIED-denied"),
        pytest.param("auth", "a.test", id="PROXY_AUTH_REQUIRED-users"),
        pytest.param("open", "localhost", id="PRIVATE_ADDRESS"),
    ],
)
def test_egress_tls_refusals_are_access_denied_alerts(gw: Gateway, which: str, sni: str) -> None:
    refused_by_alert(gw, getattr(gw, which), sni)


def refused_by_alert(gw: Gateway, splice: EgressSplice, sni: str) -> str:
    """A hello for ``sni`` to ``splice``'s egress-tls listener gets an access_denied
    alert; the access line it leaves."""
    ctx = gw.certs.client_context(check_hostname=False)
    ctx.verify_mode = ssl.CERT_NONE
    err = handshake_error(ctx, splice.ports[1], sni)
    assert "ACCESS_DENIED" in (err.reason or ""), err
    return splice.wait_line(f"host={sni}:443 ")


def test_curl_reports_the_egress_tls_refusal_as_an_access_denied_alert(gw: Gateway) -> None:
    port = gw.strict.ports[1]
    r = curl("--cacert", str(gw.certs.ca_pem), "--resolve", f"elsewhere.test:{port}:{LOOP}",
             f"https://elsewhere.test:{port}/")  # fmt: skip
    assert r.returncode == 35, r.stderr  # CURLE_SSL_CONNECT_ERROR
    assert "access denied" in r.stderr.lower()


# -- audit regressions: egress-http absolute form, route_each_request, users, address denies --


def _basic(user: str, password: str) -> str:
    return base64.b64encode(f"{user}:{password}".encode()).decode()


#: a Proxy-Authorization field for alice, as curl would send it
ALICE = f"Proxy-Authorization: Basic {_basic('alice', PASSWORD)}\r\n"


@pytest.fixture(scope="module")
def transparent(gw: Gateway) -> Iterator[EgressSplice]:
    """egress-http and egress-tls, not REDIRECTed (the port is the Host's / URL's, 443
    for TLS): only a.test may be reached, b.test maps to the same address (one CDN
    address serving both names)."""
    splice = EgressSplice(
        {
            "listen": _listen("egress-http", "egress-tls"),
            "forward": {
                "allow": ["a.test"],
                "ports": [gw.a.port],  # not 443: egress-tls to a.test is PORT_DENIED
                "hosts": {"a.test": LOOP, "b.test": LOOP},
            },
        },
        gw.tmp,
        name="transparent",
    )
    yield splice
    status = splice.stop()
    assert status == 0 and not splice.problems(), splice.stderr


def test_egress_http_checks_an_absolute_form_url_not_the_host_field(
    gw: Gateway, transparent: EgressSplice
) -> None:
    """The origin acts on the URL's authority (RFC 9112 §3.2.2): a denied name in the
    URL must not get through on an allowed Host field, to the address both share."""
    gw.a.sync()
    before = gw.a.accepted
    request = (
        f"GET http://b.test:{gw.a.port}/secret HTTP/1.1\r\nHost: a.test:{gw.a.port}\r\n\r\n"
    ).encode()
    assert_refused(ask(transparent.port, request), 403, "DESTINATION_DENIED", "b.test")
    gw.a.sync()
    assert gw.a.accepted == before, "the denied vhost was reached"
    line = transparent.wait_line(f"host=b.test:{gw.a.port} ")
    assert line.endswith(" mode=egress-http user=- dst=- rule=default DESTINATION_DENIED"), line


def test_egress_http_sends_an_absolute_form_request_on_in_origin_form_naming_its_url(
    gw: Gateway, transparent: EgressSplice
) -> None:
    gw.a.sync()
    before = gw.a.accepted
    request = (
        f"GET http://A.test:{gw.a.port}/page?q=1 HTTP/1.1\r\nHost: elsewhere.test\r\n"
        "User-Agent: raw\r\nConnection: close\r\n\r\n"
    ).encode()
    r = ask(transparent.port, request)
    assert r.status == 200
    assert (r.json()["name"], r.json()["target"]) == ("vm-a", "/page?q=1")
    assert_origin_form(
        bytes(gw.a.wait_done(before).received),
        "GET /page?q=1 HTTP/1.1",
        f"a.test:{gw.a.port}",
        [("user-agent", "raw"), ("connection", "close")],
    )


def test_egress_http_refuses_an_https_url_as_a_bad_request(
    gw: Gateway, transparent: EgressSplice
) -> None:
    gw.a.sync()
    before = gw.a.accepted
    authority = f"a.test:{gw.a.port}"
    request = f"GET https://{authority}/ HTTP/1.1\r\nHost: {authority}\r\n\r\n".encode()
    assert_shed_error(ask(transparent.port, request), 400, "BAD_REQUEST")
    gw.a.sync()
    assert gw.a.accepted == before


@pytest.fixture(scope="module")
def blind(gw: Gateway) -> Iterator[EgressSplice]:
    """``route_each_request = false`` (the benchmark knob) with users and an allow list."""
    splice = EgressSplice(
        {
            "route_each_request": False,
            "listen": _listen("forward", "egress-http"),
            "forward": {
                "allow": ["a.test"],
                "ports": [gw.a.port, gw.b.port],
                "hosts": {"a.test": LOOP, "b.test": LOOP},
                "users": gw.auth_cfg["forward"]["users"],
            },
        },
        gw.tmp,
        name="blind",
    )
    yield splice
    status = splice.stop()
    assert status == 0 and not splice.problems(), splice.stderr


def _request(mode: str, authority: str, path: str, *fields: str) -> bytes:
    """A GET as a proxy client (absolute form) or an intercepted one (origin form) sends it."""
    target = f"http://{authority}{path}" if mode == "forward" else path
    return f"GET {target} HTTP/1.1\r\nHost: {authority}\r\n{''.join(fields)}\r\n".encode()


@pytest.mark.parametrize("mode", ["forward", "egress-http"])
def test_route_each_request_off_still_routes_every_egress_request(
    gw: Gateway, blind: EgressSplice, mode: str
) -> None:
    """After the first request nothing may go blind: the second one is stripped of the
    proxy's fields like the first, the third (no credentials) gets 407, and on a new
    connection a denied name after an allowed one is refused, not spliced to vm-a."""
    port = blind.ports[0 if mode == "forward" else 1]
    a, b = f"a.test:{gw.a.port}", f"b.test:{gw.b.port}"
    gw.a.sync()
    before = gw.a.accepted
    with RawClient(port) as c:
        c.send(_request(mode, a, "/one", ALICE))
        assert c.read_response().json()["target"] == "/one"
        c.send(_request(mode, a, "/two", ALICE, "Accept: */*\r\n"))
        echo = c.read_response().json()
        assert echo["target"] == "/two"
        assert "proxy-authorization" not in {n for n, _ in fields_of(echo)}
        c.send(_request(mode, a, "/three"))
        r = c.read_response()
    assert_shed_error(r, 407, "PROXY_AUTH_REQUIRED")
    gw.b.sync()
    before_b = gw.b.accepted
    with RawClient(port) as c:
        c.send(_request(mode, a, "/four", ALICE))
        assert c.read_response().json()["target"] == "/four"
        c.send(_request(mode, b, "/five", ALICE))
        r = c.read_response()
    assert_refused(r, 403, "DESTINATION_DENIED", "b.test")
    gw.a.sync()
    gw.b.sync()
    assert (gw.a.accepted - before, gw.b.accepted - before_b) == (2, 0)


def test_egress_tls_refuses_every_client_when_proxy_users_are_required(gw: Gateway) -> None:
    """A transparent TLS client cannot send credentials: with users it is refused (an
    access_denied alert, PROXY_AUTH_REQUIRED logged) before any name check or dial,
    as forward mode answers a request without credentials 407."""
    line = refused_by_alert(gw, gw.auth, "secure.test")
    assert line.endswith(" mode=egress-tls user=- dst=- rule=- PROXY_AUTH_REQUIRED"), line


def test_egress_tls_port_denied_is_an_access_denied_alert(
    gw: Gateway, transparent: EgressSplice
) -> None:
    line = refused_by_alert(gw, transparent, "a.test")
    assert line.endswith(" mode=egress-tls user=- dst=- rule=ports PORT_DENIED"), line


@pytest.fixture(scope="module")
def deny_ip(gw: Gateway) -> Iterator[EgressSplice]:
    """Loopback is opened by ``allow_networks``; 127.0.0.1 is denied on vm-b's port and
    on 443 by IP-literal patterns, so vm-a's port stays a reachable control."""
    splice = EgressSplice(
        {
            "listen": _listen("forward", "egress-tls"),
            "forward": {
                "deny": [f"{LOOP}:{gw.b.port}", f"{LOOP}:443"],
                "ports": [443, gw.a.port, gw.b.port],
                "allow_networks": ["127.0.0.0/8"],
                "hosts": {"mapped.test": LOOP},
            },
        },
        gw.tmp,
        name="deny-ip",
    )
    yield splice
    status = splice.stop()
    assert status == 0 and not splice.problems(), splice.stderr


@pytest.mark.parametrize("name", ["localhost", "mapped.test"])
def test_a_name_leading_to_a_denied_address_is_refused_like_the_address(
    gw: Gateway, deny_ip: EgressSplice, name: str
) -> None:
    """``localhost`` resolves to 127.0.0.1, ``mapped.test`` is a ``hosts`` entry for it:
    both are refused where ``127.0.0.1`` itself is, with the same code and rule."""
    proxy = f"http://{LOOP}:{deny_ip.port}"
    r = curl("-x", proxy, f"http://{name}:{gw.a.port}/control")
    assert (r.status, json.loads(r.body)["name"]) == (200, "vm-a")
    gw.b.sync()
    before = gw.b.accepted
    rule = f"{LOOP}:{gw.b.port}"
    for url in (f"http://{LOOP}:{gw.b.port}/", f"http://{name}:{gw.b.port}/"):
        r = curl("-x", proxy, url)
        assert r.status == 403, (url, r.status)
        assert r.header("x-shed-error") == "DESTINATION_DENIED"
        assert f"rule '{rule}'" in error_text(r.body)
    line = deny_ip.wait_line(f"host={name}:{gw.b.port} ")
    assert line.endswith(f" mode=forward user=- dst=- rule={rule} DESTINATION_DENIED"), line
    gw.b.sync()
    assert gw.b.accepted == before, "a denied address was dialled"


def test_egress_tls_refuses_a_name_mapped_to_a_denied_address(
    gw: Gateway, deny_ip: EgressSplice
) -> None:
    line = refused_by_alert(gw, deny_ip, "mapped.test")
    assert line.endswith(f" mode=egress-tls user=- dst=- rule={LOOP}:443 DESTINATION_DENIED")
