"""TLS passthrough end to end: real clients, a real splice process, VMs terminating TLS.

One splice serves the whole module: a TLS listener, a TLS listener with a fallback shed
and an HTTP listener. The VMs are Python ssl servers reporting the SNI they saw, a raw
recorder, and a real nginx with http2. splice never decrypts, so every client verifies
the VM's own certificate (a trustme CA made here) through it.
"""

from __future__ import annotations

import itertools
import os
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from tls_peers import (
    DOMAIN,
    IO_TIMEOUT,
    BioClient,
    Certs,
    EchoServer,
    Nginx,
    RawServer,
    SniServer,
    Splice,
    client_hello,
    free_port,
    handshake_error,
    http_response,
    https_get,
    make_certs,
    recv_until_eof,
    wait_for,
)

#: the head timeout of this module's splice: long enough for the slow clients here
HEAD_TIMEOUT = 2.0

#: TLS alert record: type 21, version, length 2, then level and description
ALERT = 21
FATAL = 2
UNRECOGNIZED_NAME = 112
HANDSHAKE_FAILURE = 40
INTERNAL_ERROR = 80


@dataclass
class Net:
    certs: Certs
    splice: Splice
    tls: int
    tls_fb: int
    http: int
    vm: SniServer
    vm2: SniServer
    raw: RawServer
    web: RawServer
    echo: EchoServer
    nginx_port: int
    dead: int


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Net]:
    tmp = tmp_path_factory.mktemp("tls")
    certs = make_certs(tmp)
    vm, vm2 = SniServer(certs), SniServer(certs)
    raw = RawServer()
    echo = EchoServer()
    web = RawServer(
        lambda buf: http_response(b"plain http\n") if b"\r\n\r\n" in buf else None,
        close_after_reply=True,
    )
    splice: Splice | None = None
    try:
        tls, tls_fb, http, dead, nginx_port = (free_port() for _ in range(5))
        config = f"""
domains = ["{DOMAIN}"]
head_timeout = {HEAD_TIMEOUT}

[[listen]]
address = "127.0.0.1:{tls}"
mode = "tls-passthrough"

[[listen]]
address = "127.0.0.1:{tls_fb}"
mode = "tls-passthrough"
fallback = "alpha"

[[listen]]
address = "127.0.0.1:{http}"
mode = "http"

[sheds.alpha]
address = "127.0.0.1"
tls_port = {vm.port}
default_port = {web.port}

[sheds.beta]
address = "127.0.0.1"
tls_port = {vm.port}
ports = [{vm2.port}]

[sheds.down]
address = "127.0.0.1"
tls_port = {dead}

[sheds.raw]
address = "127.0.0.1"
tls_port = {raw.port}

[sheds.echo]
address = "127.0.0.1"
tls_port = {echo.port}

[sheds.web]
address = "127.0.0.1"
tls_port = {nginx_port}  # started only by the test that needs it
"""
        splice = Splice(config, tmp, [tls, tls_fb, http])
        yield Net(certs, splice, tls, tls_fb, http, vm, vm2, raw, web, echo, nginx_port, dead)
    finally:
        if splice is not None:
            splice.stop()
        for server in (vm, vm2, raw, web, echo):
            server.close()


@pytest.fixture(scope="module")
def nginx(net: Net, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Nginx]:
    server = Nginx(net.certs, tmp_path_factory.mktemp("nginx"), net.nginx_port)
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def fresh(net: Net) -> Iterator[None]:
    """Each test starts with empty VM records and must leave no traceback in splice's log."""
    for server in (net.vm, net.vm2, net.raw, net.web):
        server.reset()
    before = len(net.splice.lines)
    yield
    new = net.splice.lines[before:]
    assert not [line for line in new if "Traceback" in line or " ERROR " in line], "\n".join(new)


def alert_of(data: bytes) -> int:
    """The description of the single fatal alert record ``data`` must be."""
    assert len(data) == 7, data
    assert data[0] == ALERT and data[5] == FATAL, data
    return data[6]


#: a loopback source address per traced client: none is shared within the module
_SOURCES = itertools.count(101)


def own_client(port: int) -> socket.socket:
    """A client connected to ``port`` from a loopback address no other connection here
    uses, so its access line is known by address: a line is flushed up to 0.25 s after
    its connection ends, and an earlier test's client may have had the same port."""
    sock = socket.socket()
    try:
        sock.settimeout(IO_TIMEOUT)
        sock.bind((f"127.0.0.{next(_SOURCES)}", 0))
        sock.connect(("127.0.0.1", port))
    except OSError:
        sock.close()
        raise
    return sock


def access_of(sock: socket.socket) -> str:
    """What the access line of ``sock``'s connection starts with."""
    host, port = sock.getsockname()
    return f"access {host}:{port} "


def run_tool(args: list[str], stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(args, input=stdin, capture_output=True, timeout=15, check=False)


# -- routing by SNI -------------------------------------------------------------------------


def test_a_python_client_reaches_the_vm_its_sni_names_and_verifies_the_vm_certificate(
    net: Net,
) -> None:
    body = https_get(net.certs.client_context(), net.tls, f"alpha.{DOMAIN}")
    assert body == f"sni=alpha.{DOMAIN} port={net.vm.port}\n".encode()
    (seen,) = net.vm.wait_seen()
    assert seen.sni == f"alpha.{DOMAIN}"
    assert seen.data.startswith(b"GET / HTTP/1.1\r\n")


@pytest.mark.parametrize("label", ["alpha-{port}", "{port}-alpha"])
def test_a_port_in_the_name_routes_to_that_port_in_either_order(net: Net, label: str) -> None:
    name = f"{label.format(port=net.vm2.port)}.{DOMAIN}"
    body = https_get(net.certs.client_context(), net.tls, name)
    assert body == f"sni={name} port={net.vm2.port}\n".encode()
    assert not net.vm.seen


def test_a_declared_port_of_a_shed_is_reachable(net: Net) -> None:
    name = f"beta-{net.vm2.port}.{DOMAIN}"
    body = https_get(net.certs.client_context(), net.tls, name)
    assert body == f"sni={name} port={net.vm2.port}\n".encode()


def test_names_differing_only_in_case_and_a_trailing_dot_route_alike(net: Net) -> None:
    hello = client_hello(net.certs.client_context(check_hostname=False), f"ALPHA.{DOMAIN}.")
    with socket.create_connection(("127.0.0.1", net.tls), timeout=IO_TIMEOUT) as sock:
        sock.sendall(hello)
        wait_for(lambda: bool(net.vm.seen), "the VM to be dialled")
    (seen,) = net.vm.wait_seen()
    # the VM sees the name exactly as the client wrote it: splice does not rewrite
    assert seen.sni is not None and seen.sni.lower().rstrip(".") == f"alpha.{DOMAIN}"


@pytest.mark.peer
def test_openssl_s_client_completes_a_handshake_and_an_http_exchange(net: Net) -> None:
    name = f"alpha.{DOMAIN}"
    result = run_tool(
        [
            "openssl", "s_client", "-connect", f"127.0.0.1:{net.tls}", "-servername", name,
            "-CAfile", str(net.certs.ca_pem), "-verify_return_error", "-quiet",
        ],
        b"GET / HTTP/1.0\r\n\r\n",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert f"sni={name} port={net.vm.port}".encode() in result.stdout


@pytest.mark.peer
def test_openssl_s_client_reports_the_unrecognized_name_alert(net: Net) -> None:
    result = run_tool(
        [
            "openssl", "s_client", "-connect", f"127.0.0.1:{net.tls}",
            "-servername", f"nobody.{DOMAIN}", "-CAfile", str(net.certs.ca_pem), "-quiet",
        ],
        b"GET / HTTP/1.0\r\n\r\n",
    )  # fmt: skip
    assert result.returncode != 0
    assert b"unrecognized name" in result.stderr, result.stderr


@pytest.mark.peer
def test_curl_fetches_over_https_through_splice(net: Net) -> None:
    name = f"alpha.{DOMAIN}"
    result = run_tool(
        [
            "curl", "-sS", "--max-time", "10", "--resolve", f"{name}:{net.tls}:127.0.0.1",
            "--cacert", str(net.certs.ca_pem), "-w", "\n%{http_version}",
            f"https://{name}:{net.tls}/",
        ]
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"sni={name} port={net.vm.port}\n\n1.1".encode()


@pytest.mark.peer
def test_curl_http2_negotiates_h2_with_a_real_nginx_vm(net: Net, nginx: Nginx) -> None:
    name = f"web.{DOMAIN}"
    result = run_tool(
        [
            "curl", "-sS", "--http2", "--max-time", "10",
            "--resolve", f"{name}:{net.tls}:127.0.0.1", "--cacert", str(net.certs.ca_pem),
            "-w", "%{http_version}", f"https://{name}:{net.tls}/",
        ]
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"nginx sni={name} proto=HTTP/2.0\n2".encode()


@pytest.mark.peer
def test_curl_reports_the_alert_for_an_unknown_name(net: Net) -> None:
    name = f"nobody.{DOMAIN}"
    result = run_tool(
        [
            "curl", "-sS", "--max-time", "10", "--resolve", f"{name}:{net.tls}:127.0.0.1",
            "--cacert", str(net.certs.ca_pem), f"https://{name}:{net.tls}/",
        ]
    )  # fmt: skip
    assert result.returncode == 35, result.stderr  # CURLE_SSL_CONNECT_ERROR
    assert b"unrecognized name" in result.stderr


# -- how the hello arrives ---------------------------------------------------------------------


def test_a_hello_sent_one_byte_at_a_time_is_routed_and_the_handshake_completes(
    net: Net,
) -> None:
    name = f"alpha.{DOMAIN}"
    client = BioClient(net.certs.client_context(), name)
    hello = client.hello()
    assert len(hello) > 200
    with socket.create_connection(("127.0.0.1", net.tls), timeout=IO_TIMEOUT) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for i in range(len(hello)):
            sock.sendall(hello[i : i + 1])
            time.sleep(0.0005)
        client.finish_handshake(sock)
        reply = client.request(sock, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert reply.endswith(f"sni={name} port={net.vm.port}\n".encode())
    (seen,) = net.vm.wait_seen()
    assert seen.sni == name


def test_a_hello_fragmented_over_two_records_is_routed_and_the_handshake_completes(
    net: Net,
) -> None:
    name = f"alpha.{DOMAIN}"
    client = BioClient(net.certs.client_context(), name)
    hello = client.hello()
    assert hello[0] == 22 and int.from_bytes(hello[3:5], "big") == len(hello) - 5
    body, cut = hello[5:], 40  # the cut falls inside the ClientHello, before the SNI
    records = b"".join(
        hello[:3] + len(part).to_bytes(2, "big") + part for part in (body[:cut], body[cut:])
    )
    with socket.create_connection(("127.0.0.1", net.tls), timeout=IO_TIMEOUT) as sock:
        sock.sendall(records)
        client.finish_handshake(sock)
        reply = client.request(sock, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert reply.endswith(f"sni={name} port={net.vm.port}\n".encode())


def test_a_hello_already_waiting_when_splice_accepts_is_routed(net: Net) -> None:
    name = f"alpha.{DOMAIN}"
    client = BioClient(net.certs.client_context(), name)
    with socket.socket() as sock:
        with net.splice.paused():
            sock.settimeout(IO_TIMEOUT)
            sock.connect(("127.0.0.1", net.tls))
            sock.sendall(client.hello())
            time.sleep(0.05)
        client.finish_handshake(sock)
        reply = client.request(sock, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert reply.endswith(f"sni={name} port={net.vm.port}\n".encode())


def test_an_unroutable_hello_already_waiting_when_splice_accepts_gets_its_alert_at_once(
    net: Net,
) -> None:
    """The first read happens inside the connection's constructor: its errors must still
    become an alert and a close, not an exception in the accept loop and a hung client."""
    hello = client_hello(net.certs.client_context(), f"nobody.{DOMAIN}")
    with socket.socket() as sock:
        with net.splice.paused():
            sock.settimeout(IO_TIMEOUT)
            sock.connect(("127.0.0.1", net.tls))
            sock.sendall(hello)
            time.sleep(0.05)
        t0 = time.monotonic()
        data = recv_until_eof(sock, timeout=HEAD_TIMEOUT + 3)
    assert alert_of(data) == UNRECOGNIZED_NAME
    assert time.monotonic() - t0 < HEAD_TIMEOUT / 2


def test_unroutable_hellos_waiting_at_accept_leave_no_descriptor_behind(net: Net) -> None:
    hello = client_hello(net.certs.client_context(), f"nobody.{DOMAIN}")
    before = net.splice.fd_count()
    for _ in range(10):
        with socket.socket() as sock, net.splice.paused():
            sock.connect(("127.0.0.1", net.tls))
            sock.sendall(hello)
            time.sleep(0.02)
    wait_for(lambda: net.splice.fd_count() <= before, "splice to close the connections", 2.0)


def test_plaintext_already_waiting_when_splice_accepts_is_closed_at_once(net: Net) -> None:
    with socket.socket() as sock:
        with net.splice.paused():
            sock.settimeout(IO_TIMEOUT)
            sock.connect(("127.0.0.1", net.tls))
            sock.sendall(f"GET / HTTP/1.1\r\nHost: alpha.{DOMAIN}\r\n\r\n".encode())
            time.sleep(0.05)
        t0 = time.monotonic()
        data = recv_until_eof(sock, timeout=HEAD_TIMEOUT + 3)
    assert data == b""
    assert time.monotonic() - t0 < HEAD_TIMEOUT / 2


# -- failures are alerts ---------------------------------------------------------------------

ALERTS = {
    UNRECOGNIZED_NAME: "TLSV1_UNRECOGNIZED_NAME",
    HANDSHAKE_FAILURE: "SSLV3_ALERT_HANDSHAKE_FAILURE",
    INTERNAL_ERROR: "TLSV1_ALERT_INTERNAL_ERROR",
}


@pytest.mark.parametrize(
    ("name", "alert"),
    [
        (f"nobody.{DOMAIN}", UNRECOGNIZED_NAME),  # our domain, no such shed
        ("alpha.elsewhere.test", UNRECOGNIZED_NAME),  # not our domain
        (DOMAIN, UNRECOGNIZED_NAME),  # the bare base domain
        (f"beta-1.{DOMAIN}", HANDSHAKE_FAILURE),  # a port beta does not declare
        (f"0-alpha.{DOMAIN}", HANDSHAKE_FAILURE),  # not a valid port
        (f"down.{DOMAIN}", INTERNAL_ERROR),  # nothing listens on the VM port
    ],
)
def test_a_hello_that_cannot_be_routed_gets_the_matching_alert(
    net: Net, name: str, alert: int
) -> None:
    err = handshake_error(net.certs.client_context(check_hostname=False), net.tls, name)
    assert err.reason == ALERTS[alert], err
    assert not net.vm.seen and not net.vm2.seen
    # and on the wire it is exactly one fatal alert record, then the close
    hello = client_hello(net.certs.client_context(check_hostname=False), name)
    with socket.create_connection(("127.0.0.1", net.tls), timeout=IO_TIMEOUT) as sock:
        sock.sendall(hello)
        assert alert_of(recv_until_eof(sock)) == alert


def test_a_hello_without_sni_gets_unrecognized_name_when_the_listener_has_no_fallback(
    net: Net,
) -> None:
    err = handshake_error(net.certs.client_context(check_hostname=False), net.tls, None)
    assert err.reason == "TLSV1_UNRECOGNIZED_NAME", err
    assert not net.vm.seen


def test_a_hello_without_sni_goes_to_the_fallback_shed(net: Net) -> None:
    body = https_get(net.certs.client_context(check_hostname=False), net.tls_fb, None)
    assert body == f"sni=- port={net.vm.port}\n".encode()
    (seen,) = net.vm.wait_seen()
    assert seen.sni is None


def test_a_hello_with_sni_on_the_fallback_listener_is_routed_by_its_name(net: Net) -> None:
    name = f"alpha-{net.vm2.port}.{DOMAIN}"
    body = https_get(net.certs.client_context(), net.tls_fb, name)
    assert body == f"sni={name} port={net.vm2.port}\n".encode()


def test_plaintext_http_on_the_tls_port_is_closed_without_a_reply(net: Net) -> None:
    with socket.create_connection(("127.0.0.1", net.tls), timeout=IO_TIMEOUT) as sock:
        sock.sendall(f"GET / HTTP/1.1\r\nHost: alpha.{DOMAIN}\r\n\r\n".encode())
        assert recv_until_eof(sock, timeout=HEAD_TIMEOUT + 3) == b""
    assert not net.vm.seen


def test_a_client_that_stalls_mid_hello_gets_an_alert_after_the_head_timeout(net: Net) -> None:
    hello = client_hello(net.certs.client_context(), f"alpha.{DOMAIN}")
    with socket.create_connection(("127.0.0.1", net.tls), timeout=IO_TIMEOUT) as sock:
        sock.sendall(hello[:100])
        t0 = time.monotonic()
        data = recv_until_eof(sock, timeout=HEAD_TIMEOUT + 3)
        waited = time.monotonic() - t0
    assert alert_of(data) == INTERNAL_ERROR
    assert HEAD_TIMEOUT - 0.5 < waited < HEAD_TIMEOUT + 2
    assert not net.vm.seen


def test_a_client_that_closes_mid_hello_is_forgotten_quietly(net: Net) -> None:
    hello = client_hello(net.certs.client_context(), f"alpha.{DOMAIN}")
    with own_client(net.tls) as sock:
        who = access_of(sock)
        sock.sendall(hello[:50])
        sock.shutdown(socket.SHUT_WR)
        assert recv_until_eof(sock) == b""
    line = net.splice.wait_line(who)
    assert line.endswith(" CLIENT_CLOSED")
    assert not net.vm.seen


# -- the bytes and the process -------------------------------------------------------------------


def test_the_bytes_pass_untouched_both_ways_and_half_close_is_relayed(net: Net) -> None:
    hello = client_hello(net.certs.client_context(), f"raw.{DOMAIN}")
    up, down = os.urandom(300_000), os.urandom(500_000)
    net.raw.reply = lambda buf: down if len(buf) >= len(hello) + len(up) else None
    try:
        with socket.create_connection(("127.0.0.1", net.tls), timeout=IO_TIMEOUT) as sock:
            sock.sendall(hello + up)
            sock.shutdown(socket.SHUT_WR)
            received = recv_until_eof(sock)
    finally:
        net.raw.reply = None
    (seen,) = net.raw.wait_seen()
    assert seen.data[: len(hello)] == hello
    assert seen.data == hello + up
    assert received == down


def test_a_ping_pong_tunnel_is_counted_to_the_byte_on_its_access_line(net: Net) -> None:
    """Small messages one at a time, both ways: on the compiled build the C fast path
    moves them without Python (splice/io/_copy.c); every byte is still counted."""
    hello = client_hello(net.certs.client_context(), f"echo.{DOMAIN}")
    messages = [os.urandom(1 + i % 700) for i in range(400)]
    with own_client(net.tls) as sock:
        who = access_of(sock)
        sock.sendall(hello)
        assert recv_exactly(sock, len(hello)) == hello
        for m in messages:
            sock.sendall(m)
            assert recv_exactly(sock, len(m)) == m
        sock.shutdown(socket.SHUT_WR)
        assert recv_until_eof(sock) == b""
    n = len(hello) + sum(map(len, messages))
    line = net.splice.wait_line(who)
    assert f" up={n} down={n} " in line and line.endswith(" OK")


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    got = bytearray()
    while len(got) < n:
        chunk = sock.recv(n - len(got))
        assert chunk, f"EOF after {len(got)} of {n} bytes"
        got += chunk
    return bytes(got)


def test_http_and_tls_listeners_serve_side_by_side_in_one_process(net: Net) -> None:
    with socket.create_connection(("127.0.0.1", net.http), timeout=IO_TIMEOUT) as sock:
        sock.sendall(
            f"GET / HTTP/1.1\r\nHost: alpha.{DOMAIN}\r\nConnection: close\r\n\r\n".encode()
        )
        plain = recv_until_eof(sock)
    assert plain.startswith(b"HTTP/1.1 200") and plain.endswith(b"\r\n\r\nplain http\n")
    body = https_get(net.certs.client_context(), net.tls, f"alpha.{DOMAIN}")
    assert body == f"sni=alpha.{DOMAIN} port={net.vm.port}\n".encode()


def test_concurrent_clients_each_reach_the_vm_their_own_sni_names(net: Net) -> None:
    ctx = net.certs.client_context()
    names = [f"alpha.{DOMAIN}" if i % 2 else f"{net.vm2.port}-alpha.{DOMAIN}" for i in range(24)]
    bodies: dict[int, bytes] = {}
    errors: list[BaseException] = []

    def one(i: int) -> None:
        try:
            bodies[i] = https_get(ctx, net.tls, names[i])
        except (OSError, AssertionError) as e:
            errors.append(e)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(names))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(IO_TIMEOUT * 2)
    assert not errors
    for i, name in enumerate(names):
        port = net.vm.port if i % 2 else net.vm2.port
        assert bodies[i] == f"sni={name} port={port}\n".encode()


def test_the_access_log_names_the_client_host_shed_and_port(net: Net) -> None:
    name = f"alpha.{DOMAIN}"
    with own_client(net.tls) as raw:
        who = access_of(raw)
        with net.certs.client_context().wrap_socket(raw, server_hostname=name) as tls:
            tls.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            body = recv_until_eof(tls)
    assert body.endswith(f"sni={name} port={net.vm.port}\n".encode())
    line = net.splice.wait_line(who)
    assert f" host={name} shed=alpha port={net.vm.port} " in line
    assert line.endswith(" OK")


def test_the_vm_certificate_is_what_the_client_verifies(net: Net, tmp_path: Path) -> None:
    """splice holds no certificate: a client trusting another CA fails verification."""
    other = make_certs(tmp_path)
    err = handshake_error(other.client_context(), net.tls, f"alpha.{DOMAIN}")
    assert isinstance(err, ssl.SSLCertVerificationError), err
