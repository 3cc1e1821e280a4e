"""Who may connect, where a request may go, and what the VM learns about the client (issue 7).

- ``allow_clients`` (top level and per listener, IPv4 and IPv6): a refused client is
  closed before a byte is read and the VM never hears of it.
- Host injection: no Host, SNI-free trick or absolute-form target makes splice dial
  anything but the resolved shed address on a port the shed allows. Canary
  listeners on the other loopback addresses and ports prove it by seeing nothing.
- X-Forwarded-* and Forwarded: set by splice, incoming copies removed unless the
  peer is a trusted front; with the feature off, the head reaches the VM byte for
  byte; the body is never touched.
"""

from __future__ import annotations

import hashlib
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hardening_peers import (
    DOMAIN,
    Canary,
    Client,
    Fleet,
    Splice,
    config,
    read_to_end,
    shed_at,
)
from upstreams import EchoApp, Response, chunk, get

ALPHA = f"alpha.{DOMAIN}"


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    f = Fleet(tmp_path)
    yield f
    errors = f.close()
    assert not errors, errors


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


def _refused(s: Splice, index: int, source: str, send: bytes = b"") -> tuple[bytes, str]:
    """What a client from ``source`` gets: (bytes, how the connection ended)."""
    with s.client(index, source=source) as c:
        if send:
            try:
                c.send(send)
            except OSError:
                return b"", "reset"
        return read_to_end(c.sock, timeout=5.0)


def _answer(s: Splice, index: int = 0, source: str | None = None) -> Response:
    with s.client(index, source=source) as c:
        c.send(get(ALPHA))
        return c.read_response()


# -- allow_clients ---------------------------------------------------------------------


def test_allow_clients_admits_the_listed_source_and_closes_others_without_a_byte(
    fleet: Fleet,
) -> None:
    alpha = fleet.keep(EchoApp("alpha"))
    s = fleet.start(
        config(
            {"alpha": shed_at(alpha)},
            listen=[
                {"address": "127.0.0.1:0", "mode": "http"},
                {"address": "127.0.0.1:0", "mode": "tls-passthrough", "fallback": "alpha"},
            ],
            allow_clients=["127.0.0.1/32"],
        )
    )
    assert _answer(s).status == 200
    silent = _refused(s, 0, "127.0.0.2")
    talking = _refused(s, 0, "127.0.0.2", get(ALPHA))
    tls = _refused(s, 1, "127.0.0.2", b"\x16\x03\x01\x00\x05hello")
    for what, (data, how) in {"silent": silent, "talking": talking, "tls": tls}.items():
        assert data == b"" and how in ("eof", "reset"), (
            f"{what} client from 127.0.0.2: {how} {data[:80]!r}"
        )
    alpha.sync()
    assert alpha.accepted == 1, f"a refused client reached the VM: {alpha.accepted} connections"
    s.wait_access(1)
    time.sleep(0.5)  # two more access-log flushes: refused clients are not connections
    assert len(s.access_lines()) == 1, s.access_lines()


def test_a_listeners_allow_clients_overrides_the_top_level_list(fleet: Fleet) -> None:
    alpha = fleet.keep(EchoApp("alpha"))
    s = fleet.start(
        config(
            {"alpha": shed_at(alpha)},
            listen=[
                {"address": "127.0.0.1:0", "mode": "http"},
                {"address": "127.0.0.1:0", "mode": "http", "allow_clients": ["127.0.0.2/32"]},
                {"address": "127.0.0.1:0", "mode": "http", "allow_clients": []},
            ],
            allow_clients=["127.0.0.1/32"],
        )
    )
    assert _answer(s, 0, "127.0.0.1").status == 200
    assert _refused(s, 0, "127.0.0.2", get(ALPHA))[0] == b""
    assert _answer(s, 1, "127.0.0.2").status == 200
    assert _refused(s, 1, "127.0.0.1", get(ALPHA))[0] == b""
    # an empty list on a listener: everyone, whatever the top level says
    assert _answer(s, 2, "127.0.0.3").status == 200
    alpha.sync()
    assert alpha.accepted == 3


def test_allow_clients_applies_to_an_ipv6_listener_on_loopback(fleet: Fleet) -> None:
    assert _has_ipv6_loopback(), "these IPv6 checks need ::1 on the loopback interface"
    alpha = fleet.keep(EchoApp("alpha"))
    s = fleet.start(
        config(
            {"alpha": shed_at(alpha)},
            listen=[
                {"address": "[::1]:0", "mode": "http", "allow_clients": ["::1/128"]},
                {"address": "[::1]:0", "mode": "http", "allow_clients": ["127.0.0.1/32"]},
            ],
        )
    )
    assert s.addresses[0][0] == "::1", s.addresses
    resp = _answer(s, 0)
    assert resp.status == 200
    xff = [v for n, v in resp.json()["headers"] if n.lower() == "x-forwarded-for"]
    assert xff == ["::1"], xff
    data, how = _refused(s, 1, "::1", get(ALPHA))
    assert data == b"" and how in ("eof", "reset"), (data, how)
    alpha.sync()
    assert alpha.accepted == 1


# -- Host injection -------------------------------------------------------------------


def test_no_host_or_target_trick_makes_splice_dial_anything_but_the_shed(fleet: Fleet) -> None:
    # alpha lives on 127.0.0.2 and declares its one port; beta on 127.0.0.3 exposes
    # every port. Canaries: 127.0.0.1:P (another address) and 127.0.0.2:Q (alpha's own
    # address, an undeclared port). None of them may ever see a connection.
    alpha = fleet.keep(EchoApp("alpha", "127.0.0.2"))
    beta = fleet.keep(EchoApp("beta", "127.0.0.3"))
    c1 = fleet.keep(Canary("canary-1"))
    c2 = fleet.keep(Canary("canary-2", "127.0.0.2"))
    p, q = c1.port, c2.port
    s = fleet.start(
        config(
            {"alpha": shed_at(alpha, ports=[alpha.port]), "beta": shed_at(beta)},
            default_port=alpha.port,
        )
    )
    long_label = "a" * 64
    reach_alpha = [
        get("ALPHA.TEST"),
        get("Alpha.Test."),
        get(f"alpha.test:{p}"),
        get("alpha.test:22"),
        get("alpha.test\t"),  # trailing whitespace is not part of a field value
        get(ALPHA, f"http://{ALPHA}/x"),
        get(ALPHA, "/", f"X-Forwarded-Host: 127.0.0.1:{p}\r\nForwarded: host=127.0.0.1:{p}\r\n"),
    ]
    refused: list[tuple[bytes, int, str]] = [
        (get(f"127.0.0.1:{p}"), 404, "UNKNOWN_HOST"),
        (get("127.0.0.2"), 404, "UNKNOWN_HOST"),
        (get("[::1]"), 404, "UNKNOWN_HOST"),
        (get(f"[::ffff:127.0.0.1]:{p}"), 404, "UNKNOWN_HOST"),
        (get("2130706433"), 404, "UNKNOWN_HOST"),
        (get("0x7f.1"), 404, "UNKNOWN_HOST"),
        (get("evil.example"), 404, "UNKNOWN_HOST"),
        (get(f"evil.example:{p}"), 404, "UNKNOWN_HOST"),
        (get("alpha.test.evil.example"), 404, "UNKNOWN_HOST"),
        (get("ALPHA.TEST.EVIL.EXAMPLE"), 404, "UNKNOWN_HOST"),
        (get("alpha.test@evil"), 400, "BAD_REQUEST"),
        (get(f"alpha.test@127.0.0.1:{p}"), 400, "BAD_REQUEST"),
        (get(f"alpha.test:{p}@127.0.0.1"), 400, "BAD_REQUEST"),
        (get("alpha.test\\@evil"), 400, "BAD_REQUEST"),
        (get("alpha.test#@evil"), 400, "BAD_REQUEST"),
        (get("alpha.test/evil"), 400, "BAD_REQUEST"),
        (get("%61lpha.test"), 404, "SHED_NOT_FOUND"),
        (get("alpha%2etest"), 404, "UNKNOWN_HOST"),
        (get("alpha.test.."), 404, "UNKNOWN_HOST"),
        (get(".alpha.test"), 404, "SHED_NOT_FOUND"),
        (get(f"{long_label}.test"), 404, "SHED_NOT_FOUND"),
        (get(f"{long_label}-alpha.test"), 404, "SHED_NOT_FOUND"),
        (get("test"), 404, "UNKNOWN_HOST"),
        (get(f"{p}-alpha.test"), 403, "PORT_NOT_EXPOSED"),
        (get(f"alpha-{q}.test"), 403, "PORT_NOT_EXPOSED"),
        (get(f"{q}-ALPHA.TEST."), 403, "PORT_NOT_EXPOSED"),
        (get(ALPHA, f"/port/{q}/"), 403, "PORT_NOT_EXPOSED"),
        (get(ALPHA, f"http://{ALPHA}/port/{p}"), 403, "PORT_NOT_EXPOSED"),
        (get(ALPHA, "http://evil.example/"), 404, "UNKNOWN_HOST"),
        (get(ALPHA, "HTTP://EVIL.EXAMPLE/"), 404, "UNKNOWN_HOST"),
        (get(ALPHA, f"http://127.0.0.1:{p}/"), 404, "UNKNOWN_HOST"),
        (get(ALPHA, f"http://{ALPHA}@127.0.0.1:{p}/"), 400, "BAD_REQUEST"),
        (get(ALPHA, f"http://127.0.0.1:{p}@{ALPHA}/"), 400, "BAD_REQUEST"),
        (get(ALPHA, f"ftp://127.0.0.1:{p}/"), 400, "BAD_REQUEST"),
        (get(ALPHA, f"//127.0.0.1:{p}/"), 0, ""),  # a path: reaches alpha, as a path
        (f"CONNECT 127.0.0.1:{p} HTTP/1.1\r\nHost: 127.0.0.1:{p}\r\n\r\n".encode(), 400, ""),
        (f"CONNECT {ALPHA}:{p} HTTP/1.1\r\nHost: {ALPHA}:{p}\r\n\r\n".encode(), 400, ""),
        (f"GET / HTTP/1.1\r\nHost: {ALPHA}\r\nHost: 127.0.0.1:{p}\r\n\r\n".encode(), 400, ""),
        ("GET / HTTP/1.1\r\nHost: alpha.tést\r\n\r\n".encode(), 400, "BAD_REQUEST"),
        (get("al\x01pha.test"), 400, "BAD_REQUEST"),
        (get("alpha.test\x00.evil"), 400, "BAD_REQUEST"),
        (get(f"{p}-beta.test"), 502, "CONNECT_FAILED"),  # beta's own address, not P's
    ]
    for req in reach_alpha:
        with s.client() as c:
            c.send(req)
            resp = c.read_response()
        assert resp.status == 200 and resp.json()["name"] == "alpha", (req, resp.status)
    seen = []
    reached = 0
    for req, status, code in refused:
        with s.client() as c:
            c.send(req)
            resp = c.read_response()
        seen.append((req.split(b"\r\n\r\n")[0], resp.status, resp.header("x-shed-error")))
        if status == 0:
            assert resp.status == 200 and resp.json()["target"].startswith("//"), seen[-1]
            reached += 1
        elif code:
            assert (resp.status, resp.header("x-shed-error")) == (status, code), seen[-1]
        else:
            assert 400 <= resp.status < 500 and resp.header("x-shed-error"), seen[-1]
    # a keep-alive connection routed to alpha cannot be turned elsewhere either
    with s.client() as c:
        c.send(get(ALPHA))
        assert c.read_response().status == 200
        c.send(get(ALPHA, f"http://127.0.0.1:{p}/"))
        assert c.read_response().status == 404
    for canary in (c1, c2):
        canary.sync()
    alpha.sync()
    beta.sync()
    figures = f"canaries {c1.accepted}+{c2.accepted}, alpha {alpha.accepted}, beta {beta.accepted}"
    assert c1.accepted == 0 and c2.accepted == 0, figures + "\n" + "\n".join(map(str, seen))
    assert alpha.accepted == len(reach_alpha) + reached + 1, figures
    assert beta.accepted == 0, figures


# -- forwarded headers ------------------------------------------------------------------

SPOOF = (
    "X-Forwarded-For: 6.6.6.6\r\nx-forwarded-proto: https\r\n"
    "X-FORWARDED-HOST: evil.example\r\nForwarded: for=6.6.6.6;host=evil.example\r\n"
)
#: a body that looks like forwarding headers: it must arrive untouched
BODY = b"\r\nX-Forwarded-For: 6.6.6.6\r\nForwarded: for=6.6.6.6\r\n\r\n" * 1000


def _spoofed_post(chunked: bool = False) -> bytes:
    if chunked:
        return (
            f"POST /p HTTP/1.1\r\nHost: {ALPHA}\r\n{SPOOF}Transfer-Encoding: chunked\r\n\r\n"
        ).encode() + chunk(BODY)
    return (
        f"POST /p HTTP/1.1\r\nHost: {ALPHA}\r\n{SPOOF}Content-Length: {len(BODY)}\r\n\r\n"
    ).encode() + BODY


def _fields(resp: Response) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for name, value in resp.json()["headers"]:
        out.setdefault(name.lower(), []).append(value)
    return out


FWD = ("x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "forwarded")


def test_by_default_the_vm_sees_our_x_forwarded_fields_and_never_the_clients(
    fleet: Fleet,
) -> None:
    alpha = fleet.keep(EchoApp("alpha"))
    s = fleet.start(config({"alpha": shed_at(alpha)}))
    want = {
        "x-forwarded-for": ["127.0.0.1"],
        "x-forwarded-proto": ["http"],
        "x-forwarded-host": [ALPHA],
    }
    with s.client() as c:
        for chunked in (False, True, False):  # the second and third take the same-Host path
            c.send(_spoofed_post(chunked))
            resp = c.read_response()
            assert resp.status == 200
            got = {k: v for k, v in _fields(resp).items() if k in FWD}
            assert got == want, (chunked, got)
            assert resp.json()["body_sha256"] == hashlib.sha256(BODY).hexdigest()


def test_a_trusted_front_keeps_its_forwarding_fields_and_others_still_lose_theirs(
    fleet: Fleet,
) -> None:
    alpha = fleet.keep(EchoApp("alpha"))
    s = fleet.start(config({"alpha": shed_at(alpha)}, trusted_fronts=["127.0.0.1/32"]))
    sent = _spoofed_post()
    with s.client(source="127.0.0.1") as c:
        c.send(sent)
        resp = c.read_response()
    got = {k: v for k, v in _fields(resp).items() if k in FWD}
    assert got == {
        "x-forwarded-for": ["6.6.6.6"],
        "x-forwarded-proto": ["https"],
        "x-forwarded-host": ["evil.example"],
        "forwarded": ["for=6.6.6.6;host=evil.example"],
    }, got
    assert bytes(alpha.conns[0].received[: len(sent)]) == sent, "a trusted front's head changed"
    with s.client(source="127.0.0.2") as c:
        c.send(sent)
        resp = c.read_response()
    got = {k: v for k, v in _fields(resp).items() if k in FWD}
    assert got["x-forwarded-for"] == ["127.0.0.2"] and "forwarded" not in got, got
    assert resp.json()["body_sha256"] == hashlib.sha256(BODY).hexdigest()


def test_forwarded_true_adds_an_rfc_7239_forwarded_field(fleet: Fleet) -> None:
    alpha = fleet.keep(EchoApp("alpha"))
    s = fleet.start(config({"alpha": shed_at(alpha)}, forwarded=True))
    with s.client() as c:
        c.send(_spoofed_post(chunked=True))
        resp = c.read_response()
    got = _fields(resp)
    assert got["forwarded"] == [f'for=127.0.0.1;proto=http;host="{ALPHA}"'], got
    assert got["x-forwarded-for"] == ["127.0.0.1"], got
    assert resp.json()["body_sha256"] == hashlib.sha256(BODY).hexdigest()


def test_forwarded_headers_false_leaves_the_head_and_body_byte_for_byte(fleet: Fleet) -> None:
    alpha = fleet.keep(EchoApp("alpha"))
    s = fleet.start(config({"alpha": shed_at(alpha)}, forwarded_headers=False))
    sent = [_spoofed_post(), _spoofed_post(chunked=True)]
    with s.client() as c:
        for req in sent:
            c.send(req)
            assert c.read_response().status == 200
    received = bytes(alpha.conns[0].received)
    assert received == b"".join(sent), (len(received), sum(map(len, sent)))
    assert hashlib.sha256(received).hexdigest() == hashlib.sha256(b"".join(sent)).hexdigest()


def test_the_client_address_in_forwarded_is_that_of_an_ipv6_client(fleet: Fleet) -> None:
    assert _has_ipv6_loopback(), "these IPv6 checks need ::1 on the loopback interface"
    alpha = fleet.keep(EchoApp("alpha"))
    s = fleet.start(
        config({"alpha": shed_at(alpha)}, listen=[{"address": "[::1]:0"}], forwarded=True)
    )
    with Client(s.port, host="::1") as c:
        c.send(get(ALPHA, "/", "X-Forwarded-For: 6.6.6.6\r\n"))
        got = _fields(c.read_response())
    assert got["x-forwarded-for"] == ["::1"], got
    assert got["forwarded"] == [f'for="[::1]";proto=http;host="{ALPHA}"'], got


def test_x_forwarded_host_names_the_host_an_absolute_form_request_was_routed_by(
    fleet: Fleet,
) -> None:
    """Engine bug: routing takes the absolute-form authority, but X-Forwarded-Host
    (and the Host the VM sees) is the client's Host header, naming another host."""
    alpha = fleet.keep(EchoApp("alpha"))
    s = fleet.start(config({"alpha": shed_at(alpha)}))
    with s.client() as c:
        c.send(f"GET http://{ALPHA}/x HTTP/1.1\r\nHost: beta.{DOMAIN}\r\n\r\n".encode())
        resp = c.read_response()
    assert resp.status == 200 and resp.json()["name"] == "alpha"
    got = _fields(resp)
    assert got["x-forwarded-host"] == [ALPHA], got
