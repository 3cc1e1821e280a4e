"""PROXY protocol end to end: splice sends v1/v2 to VMs, and accepts them from a trusted front.

One splice serves the module. Sending: raw recorder VMs parse what splice put before the
client's bytes with ``parse_proxy_header`` and compare it with the client's real socket
address; per listener and per shed, v1 and v2, TLS and HTTP. Accepting: a "front" on
127.0.0.1 (trusted) writes a PROXY header with a made-up source, 203.0.113.7 (it is only
data in the header; nothing is sent there), and the access log and the header splice sends
on carry it. Clients bound to 127.0.0.2 are untrusted.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from tls_peers import (
    DOMAIN,
    IO_TIMEOUT,
    Certs,
    RawServer,
    Seen,
    SniServer,
    Splice,
    client_hello,
    free_port,
    http_response,
    https_get,
    make_certs,
    proxy_v1,
    proxy_v2,
    recv_until_eof,
    wait_for,
)

from splice.wire.proxy_header import PP2Type, ProxyInfo, parse_proxy_header

HEAD_TIMEOUT = 2.0
#: the made-up client a trusted front speaks for (TEST-NET-3)
FAKE = "203.0.113.7"
UNTRUSTED = "127.0.0.2"


@dataclass
class Net:
    certs: Certs
    splice: Splice
    ports: dict[str, int]
    raw: RawServer
    raw_http: RawServer
    vm: SniServer


LISTENERS = {
    # name: (mode, extra TOML)
    "tls": ("tls-passthrough", ""),
    "tls_v1": ("tls-passthrough", 'send_proxy = "v1"'),
    "tls_v2": ("tls-passthrough", 'send_proxy = "v2"\nfallback = "raw"'),
    "tls_accept": ("tls-passthrough", 'accept_proxy = ["127.0.0.1/32"]'),
    "http": ("http", ""),
    "http_v1": ("http", 'send_proxy = "v1"'),
    "http_v2": ("http", 'send_proxy = "v2"'),
    "http_accept": ("http", 'accept_proxy = ["127.0.0.1/32"]'),
}


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Net]:
    tmp = tmp_path_factory.mktemp("proxy")
    certs = make_certs(tmp)
    vm = SniServer(certs)
    raw = RawServer()
    raw_http = RawServer(
        # the head's end, not the "\r\n\r\n" that opens a v2 PROXY signature
        lambda buf: (
            http_response(b"raw\n") if buf.endswith(b"\r\n\r\n") and b" HTTP/" in buf else None
        ),
        close_after_reply=True,
    )
    splice: Splice | None = None
    try:
        ports = {name: free_port() for name in LISTENERS}
        listen = "".join(
            f'\n[[listen]]\naddress = "127.0.0.1:{ports[name]}"\nmode = "{mode}"\n{extra}\n'
            for name, (mode, extra) in LISTENERS.items()
        )
        sheds = "".join(
            f"""
[sheds.{name}]
address = "127.0.0.1"
tls_port = {raw.port}
default_port = {raw_http.port}
{extra}
"""
            for name, extra in [
                ("raw", ""),
                ("rawv1", 'send_proxy = "v1"'),
                ("rawv2", 'send_proxy = "v2"'),
            ]
        )
        config = f"""
domains = ["{DOMAIN}"]
head_timeout = {HEAD_TIMEOUT}
{listen}
{sheds}
[sheds.alpha]
address = "127.0.0.1"
tls_port = {vm.port}
default_port = {raw_http.port}
"""
        splice = Splice(config, tmp, list(ports.values()))
        yield Net(certs, splice, ports, raw, raw_http, vm)
    finally:
        if splice is not None:
            splice.stop()
        for server in (vm, raw, raw_http):
            server.close()


@pytest.fixture(autouse=True)
def fresh(net: Net) -> Iterator[None]:
    """Each test starts with empty VM records and must leave no traceback in splice's log."""
    for server in (net.vm, net.raw, net.raw_http):
        server.reset()
    before = len(net.splice.lines)
    yield
    new = net.splice.lines[before:]
    assert not [line for line in new if "Traceback" in line or " ERROR " in line], "\n".join(new)


def split_header(data: bytes) -> tuple[ProxyInfo, bytes]:
    info = parse_proxy_header(data)
    assert info is not None, data[:120]
    return info, data[info.length :]


def send_hello(
    net: Net, listener: str, name: str | None, *, preamble: bytes = b"", source: str | None = None
) -> tuple[tuple[str, int], bytes, Seen]:
    """A ClientHello (after ``preamble``) to a listener whose route ends at the raw VM.
    Returns the client's address, the hello, and what the VM received."""
    hello = client_hello(net.certs.client_context(check_hostname=False), name)
    with socket.socket() as sock:
        sock.settimeout(IO_TIMEOUT)
        if source is not None:
            sock.bind((source, 0))
        sock.connect(("127.0.0.1", net.ports[listener]))
        sock.sendall(preamble + hello)
        wait_for(lambda: bool(net.raw.seen) and net.raw.seen[0].data.endswith(hello), "the hello")
        client = sock.getsockname()[:2]
    (seen,) = net.raw.wait_seen()
    return client, hello, seen


def send_request(
    net: Net, listener: str, host: str, *, preamble: bytes = b"", source: str | None = None
) -> tuple[tuple[str, int], bytes, Seen]:
    """A GET (after ``preamble``) to an HTTP listener; the client, the response, the VM's view."""
    with socket.socket() as sock:
        sock.settimeout(IO_TIMEOUT)
        if source is not None:
            sock.bind((source, 0))
        sock.connect(("127.0.0.1", net.ports[listener]))
        sock.sendall(preamble + f"GET /x HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        client = sock.getsockname()[:2]
        response = recv_until_eof(sock)
        (seen,) = net.raw_http.wait_seen()
    return client, response, seen


def assert_refused(net: Net, sock: socket.socket) -> None:
    """splice closes the connection without routing it anywhere."""
    data = recv_until_eof(sock, timeout=HEAD_TIMEOUT / 2)
    assert data == b"" or data[0] == 0x15, data  # nothing, or at most a TLS alert
    time.sleep(0.1)
    assert not net.raw.seen and not net.raw_http.seen and not net.vm.seen


# -- sending: splice -> VM -------------------------------------------------------------------


@pytest.mark.parametrize("version", [1, 2])
def test_a_tls_listener_sends_the_clients_real_address_to_the_vm(net: Net, version: int) -> None:
    listener = f"tls_v{version}"
    name = f"raw.{DOMAIN}"
    client, hello, seen = send_hello(net, listener, name)
    info, rest = split_header(seen.data)
    assert info.version == version
    assert info.src == client
    assert info.dst == ("127.0.0.1", net.ports[listener])
    assert rest == hello
    if version == 2:
        assert info.tlvs == ((PP2Type.AUTHORITY, name.encode()),)


@pytest.mark.parametrize("version", [1, 2])
def test_a_shed_asks_for_its_own_proxy_header_on_a_plain_listener(net: Net, version: int) -> None:
    name = f"rawv{version}.{DOMAIN}"
    client, hello, seen = send_hello(net, "tls", name)
    info, rest = split_header(seen.data)
    assert (info.version, info.src, info.dst) == (version, client, ("127.0.0.1", net.ports["tls"]))
    assert rest == hello
    if version == 2:
        assert dict(info.tlvs)[PP2Type.AUTHORITY] == name.encode()


def test_the_sheds_version_wins_over_the_listeners(net: Net) -> None:
    client, hello, seen = send_hello(net, "tls_v2", f"rawv1.{DOMAIN}")
    info, rest = split_header(seen.data)
    assert (info.version, info.src) == (1, client)
    assert rest == hello


def test_a_v2_header_for_a_hello_without_sni_carries_no_authority(net: Net) -> None:
    client, hello, seen = send_hello(net, "tls_v2", None)  # to the fallback shed, raw
    info, rest = split_header(seen.data)
    assert (info.version, info.src, info.tlvs) == (2, client, ())
    assert rest == hello


def test_no_proxy_header_is_sent_unless_asked_for(net: Net) -> None:
    _, hello, seen = send_hello(net, "tls", f"raw.{DOMAIN}")
    assert seen.data == hello


@pytest.mark.parametrize("version", [1, 2])
def test_an_http_listener_sends_the_clients_real_address_to_the_vm(net: Net, version: int) -> None:
    listener = f"http_v{version}"
    client, response, seen = send_request(net, listener, f"raw.{DOMAIN}")
    assert response.endswith(b"\r\n\r\nraw\n")
    info, rest = split_header(seen.data)
    assert (info.version, info.src) == (version, client)
    assert info.dst == ("127.0.0.1", net.ports[listener])
    assert rest.startswith(b"GET /x HTTP/1.1\r\n")


@pytest.mark.parametrize("version", [1, 2])
def test_an_http_request_to_a_shed_that_asks_gets_the_header(net: Net, version: int) -> None:
    client, _, seen = send_request(net, "http", f"rawv{version}.{DOMAIN}")
    info, rest = split_header(seen.data)
    assert (info.version, info.src) == (version, client)
    assert rest.startswith(b"GET /x HTTP/1.1\r\n")


# -- accepting: trusted front -> splice --------------------------------------------------------

HEADERS = {"v1": proxy_v1, "v2": proxy_v2}


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_a_trusted_fronts_header_is_the_client_in_the_log_and_in_the_header_sent_on(
    net: Net, version: str
) -> None:
    fake = (FAKE, 5550 + int(version[1]))
    header = HEADERS[version](fake, ("127.0.0.1", net.ports["tls_accept"]))
    name = f"rawv2.{DOMAIN}"
    _, hello, seen = send_hello(net, "tls_accept", name, preamble=header)
    info, rest = split_header(seen.data)
    assert (info.version, info.src) == (2, fake)
    assert dict(info.tlvs)[PP2Type.AUTHORITY] == name.encode()
    assert rest == hello  # the front's header was taken off, not passed on
    line = net.splice.wait_line(f"access {FAKE}:{fake[1]} ")
    assert f" host={name} shed=rawv2 " in line


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_a_full_handshake_works_behind_a_trusted_fronts_header(net: Net, version: str) -> None:
    fake = (FAKE, 5560 + int(version[1]))
    header = HEADERS[version](fake, ("127.0.0.1", net.ports["tls_accept"]))
    name = f"alpha.{DOMAIN}"
    body = https_get(net.certs.client_context(), net.ports["tls_accept"], name, preamble=header)
    assert body == f"sni={name} port={net.vm.port}\n".encode()
    line = net.splice.wait_line(f"access {FAKE}:{fake[1]} ")
    assert line.endswith(" OK")


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_a_header_that_arrives_one_byte_at_a_time_is_still_read(net: Net, version: str) -> None:
    fake = (FAKE, 5570 + int(version[1]))
    header = HEADERS[version](fake, ("127.0.0.1", net.ports["tls_accept"]))
    hello = client_hello(net.certs.client_context(), f"rawv1.{DOMAIN}")
    with socket.create_connection(("127.0.0.1", net.ports["tls_accept"]), timeout=5) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for i in range(len(header)):
            sock.sendall(header[i : i + 1])
            time.sleep(0.002)
        sock.sendall(hello)
        wait_for(lambda: bool(net.raw.seen) and net.raw.seen[0].data.endswith(hello), "the hello")
    (seen,) = net.raw.wait_seen()
    info, rest = split_header(seen.data)
    assert (info.version, info.src) == (1, fake)
    assert rest == hello


@pytest.mark.parametrize(
    "header",
    [
        b"\r\n\r\n\x00\r\nQUIT\n\x20\x00\x00\x00",  # v2 LOCAL, UNSPEC, no payload
        b"PROXY UNKNOWN\r\n",
    ],
    ids=["v2-local", "v1-unknown"],
)
def test_a_header_without_a_client_address_keeps_the_fronts_own(net: Net, header: bytes) -> None:
    client, hello, seen = send_hello(net, "tls_accept", f"rawv1.{DOMAIN}", preamble=header)
    info, rest = split_header(seen.data)
    assert (info.version, info.src) == (1, client)
    assert rest == hello


def test_an_ipv6_client_behind_an_ipv4_front_is_passed_on_as_tcp6(net: Net) -> None:
    header = b"PROXY TCP6 2001:db8::7 2001:db8::1 5599 443\r\n"
    _, hello, seen = send_hello(net, "tls_accept", f"rawv1.{DOMAIN}", preamble=header)
    info, rest = split_header(seen.data)
    assert (info.version, info.src) == (1, ("2001:db8::7", 5599))
    # the address the client reached is the one the front reported, not splice's own
    assert info.dst == ("2001:db8::1", 443)
    assert rest == hello
    net.splice.wait_line("access 2001:db8::7:5599 ")


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_a_proxy_header_from_an_untrusted_peer_is_refused(net: Net, version: str) -> None:
    header = HEADERS[version]((FAKE, 5580), ("127.0.0.1", net.ports["tls_accept"]))
    hello = client_hello(net.certs.client_context(), f"rawv1.{DOMAIN}")
    with socket.socket() as sock:
        sock.settimeout(IO_TIMEOUT)
        sock.bind((UNTRUSTED, 0))
        sock.connect(("127.0.0.1", net.ports["tls_accept"]))
        sock.sendall(header + hello)
        assert_refused(net, sock)
    assert not [line for line in net.splice.lines if f"access {FAKE}:5580 " in line]


def test_an_untrusted_peer_without_a_header_is_served_under_its_own_address(net: Net) -> None:
    client, hello, seen = send_hello(net, "tls_accept", f"rawv1.{DOMAIN}", source=UNTRUSTED)
    assert client[0] == UNTRUSTED
    info, rest = split_header(seen.data)
    assert info.src == client
    assert rest == hello


def test_a_trusted_peer_that_omits_the_required_header_is_closed(net: Net) -> None:
    hello = client_hello(net.certs.client_context(), f"rawv1.{DOMAIN}")
    with socket.create_connection(("127.0.0.1", net.ports["tls_accept"]), timeout=5) as sock:
        sock.sendall(hello)
        assert_refused(net, sock)


def test_a_malformed_header_from_a_trusted_peer_is_closed(net: Net) -> None:
    hello = client_hello(net.certs.client_context(), f"rawv1.{DOMAIN}")
    with socket.create_connection(("127.0.0.1", net.ports["tls_accept"]), timeout=5) as sock:
        sock.sendall(b"PROXY TCP4 203.0.113.999 127.0.0.1 1 2\r\n" + hello)
        assert_refused(net, sock)


def test_a_trusted_front_that_stalls_mid_header_is_closed_after_the_head_timeout(
    net: Net,
) -> None:
    header = proxy_v2((FAKE, 5590), ("127.0.0.1", net.ports["tls_accept"]))
    with socket.create_connection(("127.0.0.1", net.ports["tls_accept"]), timeout=5) as sock:
        sock.sendall(header[:20])
        t0 = time.monotonic()
        recv_until_eof(sock, timeout=HEAD_TIMEOUT + 3)
        assert HEAD_TIMEOUT - 0.5 < time.monotonic() - t0 < HEAD_TIMEOUT + 2
    assert not net.raw.seen


def test_a_proxy_header_where_none_is_accepted_is_closed(net: Net) -> None:
    header = proxy_v1((FAKE, 5591), ("127.0.0.1", net.ports["tls"]))
    hello = client_hello(net.certs.client_context(), f"rawv1.{DOMAIN}")
    with socket.create_connection(("127.0.0.1", net.ports["tls"]), timeout=5) as sock:
        sock.sendall(header + hello)
        assert_refused(net, sock)


# -- accepting on an HTTP listener ----------------------------------------------------------------


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_an_http_listener_takes_a_trusted_fronts_header(net: Net, version: str) -> None:
    fake = (FAKE, 5600 + int(version[1]))
    header = HEADERS[version](fake, ("127.0.0.1", net.ports["http_accept"]))
    _, response, seen = send_request(net, "http_accept", f"rawv2.{DOMAIN}", preamble=header)
    assert response.endswith(b"\r\n\r\nraw\n")
    info, rest = split_header(seen.data)
    assert (info.version, info.src) == (2, fake)
    assert rest.startswith(b"GET /x HTTP/1.1\r\n")
    assert net.splice.wait_line(f"access {FAKE}:{fake[1]} ")


def test_an_http_error_behind_a_header_already_waiting_at_accept_is_answered(net: Net) -> None:
    """The first read runs in the connection's constructor; its errors must still be answered."""
    header = proxy_v1((FAKE, 5620), ("127.0.0.1", net.ports["http_accept"]))
    with socket.socket() as sock:
        with net.splice.paused():
            sock.settimeout(IO_TIMEOUT)
            sock.connect(("127.0.0.1", net.ports["http_accept"]))
            sock.sendall(header + f"GET / HTTP/1.1\r\nHost: nobody.{DOMAIN}\r\n\r\n".encode())
            time.sleep(0.05)
        data = recv_until_eof(sock, timeout=HEAD_TIMEOUT + 3)
    assert data.startswith(b"HTTP/1.1 404 "), data[:80]


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_an_http_listener_refuses_a_header_from_an_untrusted_peer(net: Net, version: str) -> None:
    header = HEADERS[version]((FAKE, 5610), ("127.0.0.1", net.ports["http_accept"]))
    with socket.socket() as sock:
        sock.settimeout(IO_TIMEOUT)
        sock.bind((UNTRUSTED, 0))
        sock.connect(("127.0.0.1", net.ports["http_accept"]))
        sock.sendall(header + f"GET / HTTP/1.1\r\nHost: rawv1.{DOMAIN}\r\n\r\n".encode())
        data = recv_until_eof(sock, timeout=HEAD_TIMEOUT / 2)
    assert not data.startswith(b"HTTP/1.1 2")
    time.sleep(0.1)
    assert not net.raw_http.seen


def test_an_http_listener_closes_a_trusted_peer_that_omits_the_header(net: Net) -> None:
    with socket.create_connection(("127.0.0.1", net.ports["http_accept"]), timeout=5) as sock:
        sock.sendall(f"GET / HTTP/1.1\r\nHost: rawv1.{DOMAIN}\r\n\r\n".encode())
        data = recv_until_eof(sock, timeout=HEAD_TIMEOUT / 2)
    assert not data.startswith(b"HTTP/1.1 2")
    time.sleep(0.1)
    assert not net.raw_http.seen
