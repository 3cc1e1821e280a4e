"""The destination policy holds on every egress path, per request.

The record/replay store's path (a connection handed to ``splice.exchange``) reads the
policy and the users table in force at each request, replays an answer only to
requests with the credentials it was recorded with, and checks the address a recording
came from as a dial would be checked. The engine's forward path logs each request's
own user and dial, and sends the Host it checked. Each test failed before its fix
(found by an audit that played a hostile sandbox). Loopback only; names are mapped by
``[forward] hosts``."""

from __future__ import annotations

import base64
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h11
import pytest
import trustme
from egress_peers import EgressSplice, proxy_hash
from store_peers import Origin
from upstreams import EchoApp, RawClient

from splice.ca import init_ca

pytestmark = pytest.mark.peer

LOOP = "127.0.0.1"


def _auth(user: str, password: str) -> str:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return f"Proxy-Authorization: Basic {token}\r\n"


ALICE, BOB = _auth("alice", "pa"), _auth("bob", "pb")


def _get(url: str, *fields: str) -> bytes:
    return f"GET {url} HTTP/1.1\r\nHost: ignored\r\n{''.join(fields)}\r\n".encode()


@pytest.fixture(scope="module")
def apps() -> Iterator[tuple[EchoApp, EchoApp]]:
    a, d = EchoApp("vm-a"), EchoApp("vm-d")
    yield a, d
    a.close()
    d.close()


@pytest.fixture(scope="module")
def users() -> dict[str, str]:
    return {"alice": proxy_hash("alice", "pa"), "bob": proxy_hash("bob", "pb")}


def _store_cfg(
    tmp: Path, a: EchoApp, d: EchoApp, users: dict[str, str], deny: list[str] | None = None
) -> dict[str, Any]:
    """record-new; bob's policy denies the address 127.0.0.1 on vm-d's port (an
    IP-literal deny: it must hold for every name leading there, as in the engine)."""
    policies = [{"users": ["bob"], "deny": [f"{LOOP}:{d.port}"]}] if "bob" in users else []
    return {
        "listen": [{"address": f"{LOOP}:0", "mode": "forward"}],
        "forward": {
            "ports": [a.port, d.port],
            "deny": deny or [],
            "allow_networks": ["127.0.0.0/8"],
            "hosts": {"allowed.test": LOOP, "internal.test": LOOP},
            "users": users,
            "policies": policies,
            "store": {"path": str(tmp / "store"), "mode": "record-new"},
        },
    }


@pytest.fixture
def store_gw(
    tmp_path: Path, apps: tuple[EchoApp, EchoApp], users: dict[str, str]
) -> Iterator[EgressSplice]:
    a, d = apps
    s = EgressSplice(_store_cfg(tmp_path, a, d, users), tmp_path, name="store")
    yield s
    assert s.stop() == 0 and not s.problems(), s.stderr


def test_store_connection_obeys_a_reload_that_removes_its_user_and_denies_its_host(
    tmp_path: Path, apps: tuple[EchoApp, EchoApp], users: dict[str, str], store_gw: EgressSplice
) -> None:
    """The engine re-reads [forward] per request (a reload denies the next request on an
    open connection); a connection handed to the store kept the users table and the
    policy it was handed over with, for as long as the client kept it busy."""
    a, d = apps
    url = f"http://allowed.test:{a.port}"
    with RawClient(store_gw.port) as c:
        c.send(_get(f"{url}/before", BOB))
        assert c.read_response().status == 200
        store_gw.reload(
            _store_cfg(tmp_path, a, d, {"alice": users["alice"]}, deny=["allowed.test"])
        )
        a.sync()
        before = a.accepted
        c.send(_get(f"{url}/after", BOB))
        r = c.read_response()
        a.sync()
    # before: 200, recorded, vm-a dialled with bob's (removed) credentials
    assert r.status in (403, 407), (r.status, r.body[:200])
    assert a.accepted == before, "a host denied by the reload was dialled"


def test_a_replay_never_hands_one_users_credentialed_answer_to_another(
    apps: tuple[EchoApp, EchoApp], store_gw: EgressSplice
) -> None:
    """The key leaves out Authorization/Cookie; merging concurrent requests respected
    them (test_concurrent_requests_with_other_credentials_are_not_merged), but a later
    replay did not: bob, sending no Authorization, got alice's answer."""
    a, _ = apps
    url = f"http://allowed.test:{a.port}/private"
    with RawClient(store_gw.port) as c:
        c.send(_get(url, ALICE, "Authorization: Bearer ALICE-SECRET\r\n"))
        assert c.read_response().status == 200
    with RawClient(store_gw.port) as c:
        c.send(_get(url, BOB))
        r = c.read_response()
    assert r.status == 200
    # before: X-Splice-Replay: hit and vm-a's echo of alice's Authorization field
    assert b"ALICE-SECRET" not in r.body, r.header("x-splice-replay")


def test_a_replay_holds_the_users_ip_literal_deny_like_a_dial(
    apps: tuple[EchoApp, EchoApp], store_gw: EgressSplice
) -> None:
    """bob's policy denies 127.0.0.1 on vm-d's port: the engine (and a store miss)
    refuses internal.test, which hosts maps there. Alice records it; bob then got
    the denied address's content from the store (only the name gate ran on a hit)."""
    _, d = apps
    url = f"http://internal.test:{d.port}/internal"
    with RawClient(store_gw.port) as c:
        c.send(_get(url, BOB))
        r = c.read_response()
    assert (r.status, r.header("x-shed-error")) == (403, "DESTINATION_DENIED")  # miss: held
    with RawClient(store_gw.port) as c:
        c.send(_get(url, ALICE))
        assert c.read_response().json()["name"] == "vm-d"
    with RawClient(store_gw.port) as c:
        c.send(_get(url, BOB))
        r = c.read_response()
    # before: 200 X-Splice-Replay: hit with vm-d's answer
    assert r.status == 403, (r.status, r.header("x-splice-replay"), r.body[:80])


@pytest.fixture
def engine_gw(
    tmp_path: Path, apps: tuple[EchoApp, EchoApp], users: dict[str, str]
) -> Iterator[EgressSplice]:
    a, _ = apps
    s = EgressSplice(
        {
            "listen": [{"address": f"{LOOP}:0", "mode": "forward"}],
            "forward": {
                "ports": [a.port],
                "deny": ["denied.test"],
                "allow_networks": ["127.0.0.0/8"],
                "hosts": {"allowed.test": LOOP},
                "users": {"alice": users["alice"]},
            },
        },
        tmp_path,
        name="engine",
    )
    yield s
    assert s.stop() == 0 and not s.problems(), s.stderr


def test_a_refused_request_after_an_allowed_one_logs_no_dst_and_no_stale_user(
    apps: tuple[EchoApp, EchoApp], engine_gw: EgressSplice
) -> None:
    a, _ = apps
    with RawClient(engine_gw.port) as c:
        c.send(_get(f"http://allowed.test:{a.port}/1", ALICE))
        assert c.read_response().status == 200
        c.send(_get(f"http://denied.test:{a.port}/2", ALICE))
        assert c.read_response().status == 403
    line = engine_gw.wait_line(f"host=denied.test:{a.port} ")
    # before: "... dst=127.0.0.1:PORT rule=denied.test DESTINATION_DENIED"
    assert " dst=- " in line, line
    with RawClient(engine_gw.port) as c:
        c.send(_get(f"http://allowed.test:{a.port}/1", ALICE))
        assert c.read_response().status == 200
        c.send(_get(f"http://allowed.test:{a.port}/2"))  # no credentials
        assert c.read_response().status == 407
    line = engine_gw.wait_line("PROXY_AUTH_REQUIRED")
    # before: "... user=alice dst=127.0.0.1:PORT rule=default PROXY_AUTH_REQUIRED"
    assert " user=- " in line, line


def test_forward_mode_sends_the_checked_name_as_host_not_the_clients_spelling(
    apps: tuple[EchoApp, EchoApp], engine_gw: EgressSplice
) -> None:
    """egress-http and the store path send ``render_authority`` of what was checked;
    forward mode sends the URL's authority as typed (case, trailing dot, 0x7f.1...)."""
    a, _ = apps
    with RawClient(engine_gw.port) as c:
        c.send(_get(f"http://ALLOWED.test.:{a.port}/h", ALICE))
        echo = c.read_response().json()
    hosts = [v for n, v in echo["headers"] if n.lower() == "host"]
    assert hosts == [f"allowed.test:{a.port}"], hosts  # before: ['ALLOWED.test.:PORT']


def _tls_exchange(tls: ssl.SSLSocket, port: int, path: str) -> int:
    """One GET inside a terminated tunnel; the answer's status (body read to its end)."""
    conn = h11.Connection(h11.CLIENT)
    head = h11.Request(method="GET", target=path, headers=[("Host", f"origin.test:{port}")])
    tls.sendall(conn.send(head) + conn.send(h11.EndOfMessage()))
    status = 0
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(tls.recv(65536))
        elif isinstance(event, h11.Response):
            status = event.status_code
        elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
            return status


def test_a_reload_that_drops_the_user_of_an_intercepted_tunnel_refuses_its_next_request(
    tmp_path: Path, users: dict[str, str]
) -> None:
    """Inside a terminated CONNECT tunnel no request carries Proxy-Authorization: the
    user its CONNECT proved must still be a user after a reload (407 once it is not)."""
    origin_ca = trustme.CA()
    bundle = tmp_path / "origin-ca.pem"
    origin_ca.cert_pem.write_to_path(str(bundle))
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    origin_ca.issue_cert("origin.test").configure_cert(server)
    origin = Origin(tls=server)
    splice_ca = init_ca(tmp_path / "ca")

    def cfg(table: dict[str, str]) -> dict[str, Any]:
        return {
            "listen": [{"address": f"{LOOP}:0", "mode": "forward"}],
            "forward": {
                "ports": [origin.port],
                "allow_networks": ["127.0.0.0/8"],
                "hosts": {"origin.test": LOOP},
                "users": table,
                "trust_bundle": str(bundle),
                "store": {
                    "path": str(tmp_path / "store"),
                    "mode": "record-new",
                    "intercept_tls": True,
                    "ca": str(tmp_path / "ca"),
                },
            },
        }

    s = EgressSplice(cfg(users), tmp_path, name="tunnel")
    try:
        with RawClient(s.port) as c:
            where = f"origin.test:{origin.port}"
            c.send(f"CONNECT {where} HTTP/1.1\r\nHost: {where}\r\n{ALICE}\r\n".encode())
            assert c.read_head()[0] == 200  # and nothing after it: TLS starts
            client = ssl.create_default_context(cafile=str(splice_ca))
            with client.wrap_socket(c.sock, server_hostname="origin.test") as tls:
                assert _tls_exchange(tls, origin.port, "/bytes/5") == 200
                s.reload(cfg({"bob": users["bob"]}))  # alice is no user now
                assert _tls_exchange(tls, origin.port, "/bytes/6") == 407
        assert origin.hits["/bytes/6"] == 0
    finally:
        origin.stop()
        assert s.stop() == 0 and not s.problems(), s.stderr
