"""Record/replay end to end on loopback: origin -> gateway (serve_forward_socket) -> client.

Each test records through a real gateway, then stops the origin (its listener and every
open connection) and replays through a fresh gateway on the same store, so a hit is
proved to need no network; the gateway's dial counter must stay at zero in ``replay``.
"""

from __future__ import annotations

import base64
import hashlib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from store_peers import BLOCK, WAIT, Gateway, Origin, body_sha, proxy_get

from splice.egress.passwords import hash_password
from splice.store.store import Store

MakeGateway = Callable[..., Gateway]


@pytest.fixture
def origin() -> Iterator[Origin]:
    o = Origin()
    yield o
    o.stop()


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[MakeGateway]:
    made: list[Gateway] = []

    def make(mode: str, **section: Any) -> Gateway:
        gw = Gateway({"path": str(tmp_path / "store"), "mode": mode, **section})
        made.append(gw)
        return gw

    yield make
    for gw in made:
        gw.close()


def _entries(tmp_path: Path) -> int:
    store = Store(tmp_path / "store", 1 << 40)
    try:
        return len(store.entries())
    finally:
        store.close()


@pytest.mark.parametrize(
    ("path", "size"),
    [("/bytes/0", 0), ("/bytes/1024", 1024), ("/bytes/65536", 65536), ("/bytes/65537", 65537),
     ("/bytes/67108864", 64 << 20),
     ("/chunked/300000", 300_000), ("/close/5000", 5000)],
)  # fmt: skip
def test_record_then_replay_offline(
    origin: Origin, gateway: MakeGateway, path: str, size: int
) -> None:
    url = f"http://127.0.0.1:{origin.port}{path}"
    rec = gateway("record")
    status, fields, body = proxy_get(rec.port, url)
    assert status == 200 and hashlib.sha256(body).hexdigest() == body_sha(size)
    assert "X-Splice-Replay" not in fields
    rec.close()
    origin.stop()
    play = gateway("replay")
    status, fields, body = proxy_get(play.port, url)
    assert status == 200 and fields["X-Splice-Replay"] == "hit"
    assert hashlib.sha256(body).hexdigest() == body_sha(size)
    assert fields["Content-Length"] == str(size) and "Transfer-Encoding" not in fields
    assert play.dials == []


def test_replay_keeps_status_and_fields(origin: Origin, gateway: MakeGateway) -> None:
    url = f"http://127.0.0.1:{origin.port}/nothing-here"
    rec = gateway("record")
    live = proxy_get(rec.port, url)
    assert live[0] == 404
    origin.stop()
    status, fields, body = proxy_get(gateway("replay").port, url)
    assert (status, body) == (404, live[2])
    assert {k: v for k, v in fields.items() if k != "X-Splice-Replay"} == live[1]


def test_replay_miss_is_504_naming_the_key(gateway: MakeGateway) -> None:
    gw = gateway("replay")
    status, fields, body = proxy_get(gw.port, "http://127.0.0.1:9/never", Accept="application/json")
    assert status == 504 and fields["X-Shed-Error"] == "REPLAY_MISS"
    assert b'"code":"REPLAY_MISS"' in body and b"key " in body
    assert gw.dials == []


def test_replay_or_forward_forwards_misses_without_storing(
    origin: Origin, gateway: MakeGateway, tmp_path: Path
) -> None:
    url = f"http://127.0.0.1:{origin.port}/bytes/10"
    gw = gateway("replay-or-forward")
    for _ in range(2):
        status, fields, _ = proxy_get(gw.port, url)
        assert status == 200 and "X-Splice-Replay" not in fields
    assert origin.hits["/bytes/10"] == 2 and _entries(tmp_path) == 0


def test_replay_or_forward_replays_hits(origin: Origin, gateway: MakeGateway) -> None:
    url = f"http://127.0.0.1:{origin.port}/bytes/10"
    proxy_get(gateway("record").port, url)
    status, fields, _ = proxy_get(gateway("replay-or-forward").port, url)
    assert status == 200 and fields["X-Splice-Replay"] == "hit"
    assert origin.hits["/bytes/10"] == 1


def test_record_new_records_misses_once(origin: Origin, gateway: MakeGateway) -> None:
    url = f"http://127.0.0.1:{origin.port}/bytes/100"
    gw = gateway("record-new")
    first = proxy_get(gw.port, url)
    second = proxy_get(gw.port, url)
    assert "X-Splice-Replay" not in first[1] and second[1]["X-Splice-Replay"] == "hit"
    assert first[2] == second[2] and origin.hits["/bytes/100"] == 1


def test_record_replaces_the_earlier_exchange(
    origin: Origin, gateway: MakeGateway, tmp_path: Path
) -> None:
    gw = gateway("record")
    for _ in range(2):
        status, fields, _ = proxy_get(gw.port, f"http://127.0.0.1:{origin.port}/echo")
        assert status == 200 and "X-Splice-Replay" not in fields
    assert origin.hits["/echo"] == 2 and _entries(tmp_path) == 1


def test_keys_keep_query_order_and_body(origin: Origin, gateway: MakeGateway) -> None:
    base = f"http://127.0.0.1:{origin.port}/echo"
    rec = gateway("record")
    proxy_get(rec.port, base + "?a=1&b=2")
    proxy_get(rec.port, base, method="POST", body=b"one")
    origin.stop()
    play = gateway("replay")
    assert proxy_get(play.port, base + "?a=1&b=2")[0] == 200
    assert proxy_get(play.port, base + "?b=2&a=1")[0] == 504
    assert proxy_get(play.port, base, method="POST", body=b"one")[0] == 200
    assert proxy_get(play.port, base, method="POST", body=b"two")[0] == 504
    assert proxy_get(play.port, base, method="PUT", body=b"one")[0] == 504
    assert proxy_get(play.port, base.replace("http://127.0.0.1", "HTTP://127.0.0.1"))[0] == 504


def test_match_without_body_and_with_named_header(origin: Origin, gateway: MakeGateway) -> None:
    base = f"http://127.0.0.1:{origin.port}/echo"
    match = ["method", "url", "header:Accept"]
    rec = gateway("record", match=match)
    proxy_get(rec.port, base, method="POST", body=b"one", Accept="text/plain")
    origin.stop()
    play = gateway("replay", match=match)
    assert proxy_get(play.port, base, method="POST", body=b"two", Accept="text/plain")[0] == 200
    assert proxy_get(play.port, base, method="POST", body=b"one", Accept="text/html")[0] == 504
    assert proxy_get(play.port, base, method="POST", body=b"one")[0] == 504


def test_concurrent_identical_requests_fetch_once(origin: Origin, gateway: MakeGateway) -> None:
    url = f"http://127.0.0.1:{origin.port}/slow/200000"
    gw = gateway("record")
    results: list[tuple[int, dict[str, str], bytes]] = []
    threads = [threading.Thread(target=lambda: results.append(proxy_get(gw.port, url)))
               for _ in range(5)]  # fmt: skip
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT)
    assert len(results) == 5 and origin.hits["/slow/200000"] == 1
    assert {hashlib.sha256(r[2]).hexdigest() for r in results} == {body_sha(200_000)}


def test_keep_alive_connection_mixes_hits_and_misses(origin: Origin, gateway: MakeGateway) -> None:
    base = f"http://127.0.0.1:{origin.port}"
    proxy_get(gateway("record").port, base + "/bytes/5")
    gw = gateway("replay-or-forward")
    with socket.create_connection(("127.0.0.1", gw.port), timeout=WAIT) as s:
        for path in ("/bytes/5", "/bytes/7", "/bytes/5"):
            s.sendall(b"GET %s%s HTTP/1.1\r\nHost: x\r\n\r\n" % (base.encode(), path.encode()))
        data = b""
        while data.count(b"HTTP/1.1 200") < 3 or not data.endswith(BLOCK5):
            chunk = s.recv(65536)
            assert chunk, data
            data += chunk
    assert data.count(b"X-Splice-Replay: hit") == 2


BLOCK5 = BLOCK[:5]


def test_a_pipelined_head_that_never_ends_gets_408_after_head_timeout(
    origin: Origin, gateway: MakeGateway
) -> None:
    """Bytes of the next head that came with the last request start its clock: with the
    head never finished, the client hears 408 HEAD_TIMEOUT in ``head_timeout``, not in
    the idle timeout, and the connection closes."""
    gw = gateway("record")
    gw.head_timeout = 0.5
    request = b"GET http://127.0.0.1:%d/bytes/5 HTTP/1.1\r\nHost: x\r\n\r\n" % origin.port
    with socket.create_connection(("127.0.0.1", gw.port), timeout=WAIT) as s:
        t0 = time.monotonic()
        s.sendall(request + request[:30])
        data = b""
        while chunk := s.recv(65536):
            data += chunk
        waited = time.monotonic() - t0
    first, _, second = data.partition(BLOCK5)
    assert first.startswith(b"HTTP/1.1 200") and second.startswith(b"HTTP/1.1 408 ")
    assert b"X-Shed-Error: HEAD_TIMEOUT" in second and waited < WAIT / 2, waited


def test_head_replays_length_without_body(origin: Origin, gateway: MakeGateway) -> None:
    url = f"http://127.0.0.1:{origin.port}/bytes/1000"
    proxy_get(gateway("record").port, url, method="HEAD")
    origin.stop()
    status, fields, body = proxy_get(gateway("replay").port, url, method="HEAD")
    assert (status, fields["Content-Length"], body) == (200, "1000", b"")


def test_policy_applies_to_replays(gateway: MakeGateway) -> None:
    status, fields, _ = proxy_get(gateway("replay").port, "http://denied.test/")
    assert status == 403 and fields["X-Shed-Error"] == "DESTINATION_DENIED"


def test_connect_in_replay_mode_without_interception_is_refused(gateway: MakeGateway) -> None:
    gw = gateway("replay")
    with socket.create_connection(("127.0.0.1", gw.port), timeout=WAIT) as s:
        s.sendall(b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n")
        reply = s.recv(65536)
    assert reply.startswith(b"HTTP/1.1 403") and b"X-Shed-Error: TUNNEL_NOT_REPLAYABLE" in reply
    assert gw.dials == []


def test_connect_without_interception_is_spliced(origin: Origin, gateway: MakeGateway) -> None:
    gw = gateway("record")
    with socket.create_connection(("127.0.0.1", gw.port), timeout=WAIT) as s:
        s.sendall(b"CONNECT 127.0.0.1:%d HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n" % origin.port)
        assert s.recv(65536).startswith(b"HTTP/1.1 200")
        s.sendall(b"GET /bytes/3 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    assert data.startswith(b"HTTP/1.1 200") and data.endswith(BLOCK5[:3])
    assert gw.dials == [("127.0.0.1", origin.port)]


def test_partial_and_not_modified_answers_are_not_recorded(
    origin: Origin, gateway: MakeGateway, tmp_path: Path
) -> None:
    gw = gateway("record")
    for code in (206, 304):
        assert proxy_get(gw.port, f"http://127.0.0.1:{origin.port}/status/{code}")[0] == code
    assert proxy_get(gw.port, f"http://127.0.0.1:{origin.port}/status/201")[0] == 201
    assert _entries(tmp_path) == 1


def test_expect_100_continue(origin: Origin, gateway: MakeGateway) -> None:
    gw = gateway("record")
    with socket.create_connection(("127.0.0.1", gw.port), timeout=WAIT) as s:
        s.sendall(
            b"POST http://127.0.0.1:%d/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
            b"Expect: 100-continue\r\nConnection: close\r\n\r\n" % origin.port
        )
        assert s.recv(65536).startswith(b"HTTP/1.1 100 ")
        s.sendall(b"hello")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    assert (
        data.startswith(b"HTTP/1.1 200") and hashlib.sha256(b"hello").hexdigest().encode() in data
    )


def test_proxy_authentication(origin: Origin, gateway: MakeGateway) -> None:
    gw = gateway("record")
    gw.users = {"builder": hash_password("s3cret")}
    url = f"http://127.0.0.1:{origin.port}/bytes/3"
    status, fields, _ = proxy_get(gw.port, url)
    assert status == 407 and fields["Proxy-Authenticate"] == 'Basic realm="splice"'
    wrong = "Basic " + base64.b64encode(b"builder:nope").decode()
    assert proxy_get(gw.port, url, **{"Proxy-Authorization": wrong})[0] == 407
    right = "Basic " + base64.b64encode(b"builder:s3cret").decode()
    assert proxy_get(gw.port, url, **{"Proxy-Authorization": right})[0] == 200
