"""Record/replay end to end on loopback: origin -> gateway (serve_forward_socket) -> client.

Each test records through a real gateway, then stops the origin (its listener and every
open connection) and replays through a fresh gateway on the same store, so a hit is
proved to need no network; the gateway's dial counter must stay at zero in ``replay``.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import http.client
import json
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from store_peers import BLOCK, WAIT, Gateway, Origin, body_sha, full_writer, proxy_get

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


def test_a_connect_without_a_port_is_400_as_in_the_engine(gateway: MakeGateway) -> None:
    """CONNECT names host:port (RFC 9110 §9.3.6); the store path took 443 and said 200."""
    gw = gateway("record")
    with socket.create_connection(("127.0.0.1", gw.port), timeout=WAIT) as s:
        s.sendall(b"CONNECT allowed.test HTTP/1.1\r\nHost: allowed.test\r\n\r\n")
        reply = s.recv(65536)
    assert reply.startswith(b"HTTP/1.1 400") and b"X-Shed-Error: INVALID_PORT" in reply, reply
    assert gw.dials == []


def test_partial_and_not_modified_answers_are_not_recorded(
    origin: Origin, gateway: MakeGateway, tmp_path: Path
) -> None:
    """206, 304, 412 and 416 answer fields the key leaves out (Range, If-*): stored, one
    would replace the full answer recorded for the same key before."""
    gw = gateway("record")
    for code in (206, 304, 412, 416):
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
    assert proxy_get(gw.port, url, headers={"Proxy-Authorization": wrong})[0] == 407
    right = "Basic " + base64.b64encode(b"builder:s3cret").decode()
    assert proxy_get(gw.port, url, headers={"Proxy-Authorization": right})[0] == 200


@pytest.mark.parametrize("at_flush", [False, True])  # a write fails; the commit's flush fails
def test_a_full_disk_stops_the_recording_not_the_download(
    origin: Origin,
    gateway: MakeGateway,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    at_flush: bool,
) -> None:
    """ENOSPC while recording (in a write, or in the commit's flush): the client still
    gets the whole body from the origin; nothing is stored, no ``.part`` file stays, and
    one warning names the file."""
    gw = gateway("record")
    store = gw.runtime.store
    make = store.writer
    store.writer = lambda: full_writer(make(), 10**9 if at_flush else 100_000, at_flush=at_flush)  # type: ignore[method-assign]
    url = f"http://127.0.0.1:{origin.port}/bytes/2000000"
    with caplog.at_level(logging.WARNING, logger="splice"):
        status, _, body = proxy_get(gw.port, url)
    assert status == 200 and hashlib.sha256(body).hexdigest() == body_sha(2_000_000)
    assert list((tmp_path / "store" / "tmp").iterdir()) == []
    assert _entries(tmp_path) == 0
    warned = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1 and ".part" in warned[0].getMessage(), warned
    store.writer = make  # type: ignore[method-assign]
    assert proxy_get(gw.port, url)[0] == 200 and _entries(tmp_path) == 1  # recording again


def _stall(port: int, url: str) -> socket.socket:
    """A client that sends its request and then reads nothing (a tiny receive buffer)."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.settimeout(WAIT)
    s.connect(("127.0.0.1", port))
    s.sendall(b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % url.encode())
    return s


def _drained_to_eof(s: socket.socket) -> int:
    """Read until the gateway closes (TimeoutError if it never does); the bytes read."""
    total = 0
    for _ in range(100_000):
        chunk = s.recv(1 << 20)
        if not chunk:
            return total
        total += len(chunk)
    raise AssertionError("no end")


def test_a_client_that_stops_reading_holds_no_one_up(origin: Origin, gateway: MakeGateway) -> None:
    """A recording whose client reads nothing: a send waits at most the idle timeout,
    then the recording goes on without it (and the connection closes); an identical
    request meanwhile does not wait behind it for longer than that either."""
    url = f"http://127.0.0.1:{origin.port}/bytes/{32 << 20}"
    gw = gateway("record")
    gw.idle_timeout = 1.0
    with _stall(gw.port, url) as stalled:
        time.sleep(0.5)
        t0 = time.monotonic()
        status, _, body = proxy_get(gw.port, url)
        assert status == 200 and len(body) == 32 << 20, len(body)
        assert time.monotonic() - t0 < WAIT / 2
        assert _drained_to_eof(stalled) < 32 << 20  # given up on, and closed


def test_a_replay_client_that_stops_reading_releases_its_pin(
    origin: Origin, gateway: MakeGateway, tmp_path: Path
) -> None:
    url = f"http://127.0.0.1:{origin.port}/bytes/{32 << 20}"
    assert proxy_get(gateway("record").port, url)[0] == 200
    gw = gateway("replay")
    gw.idle_timeout = 1.0
    with _stall(gw.port, url) as stalled:
        store = Store(tmp_path / "store", 1 << 40)
        try:
            for _ in range(100):  # the pin is taken once the replay starts
                pins = store.index.db.execute("SELECT count(*) FROM pins").fetchone()[0]
                if pins:
                    break
                time.sleep(0.05)
            assert pins == 1
            time.sleep(2.0)  # twice the idle timeout, reading nothing
            assert _drained_to_eof(stalled) < 32 << 20  # given up on, and closed
            for _ in range(100):  # the unpin is queued to a store thread
                pins = store.index.db.execute("SELECT count(*) FROM pins").fetchone()[0]
                if not pins:
                    break
                time.sleep(0.05)
            assert pins == 0
        finally:
            store.close()


def test_concurrent_requests_with_other_credentials_are_not_merged(
    origin: Origin, gateway: MakeGateway
) -> None:
    """The key leaves out Authorization and Cookie: a request waiting on another's
    recording must have the same ones, or it would be handed another user's answer."""
    url = f"http://127.0.0.1:{origin.port}/slowecho"
    gw = gateway("record")
    creds = [{"Authorization": "Bearer alice"}, {"Authorization": "Bearer bob"},
             {"Cookie": "session=carol"}, {"Cookie": "session=carol"}]  # fmt: skip
    seen: dict[int, dict[str, str]] = {}

    def get(i: int) -> None:
        status, _, body = proxy_get(gw.port, url, headers=creds[i])
        assert status == 200
        seen[i] = dict(json.loads(body)["headers"])

    threads = [threading.Thread(target=get, args=(i,)) for i in range(len(creds))]
    for t in threads:
        t.start()
        time.sleep(0.05)  # the first leads; the others come while it is fetching
    for t in threads:
        t.join(WAIT)
    assert seen[0].get("Authorization") == "Bearer alice" and "Cookie" not in seen[0]
    assert seen[1].get("Authorization") == "Bearer bob"
    assert seen[2].get("Cookie") == seen[3].get("Cookie") == "session=carol"
    assert "Authorization" not in seen[2] and "Authorization" not in seen[3]
    assert origin.hits["/slowecho"] == 3  # carol's two were merged


class RawOrigin:
    """An origin that answers every request with ``reply`` (bytes as given, however
    broken) and closes: what h11 calls the remote's protocol errors, from upstream."""

    def __init__(self, reply: bytes) -> None:
        self.reply = reply
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(WAIT)
        self.port = self.listener.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        for _ in range(20):
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(WAIT)
                head = b""
                while b"\r\n\r\n" not in head and len(head) < 65536:
                    data = conn.recv(65536)
                    if not data:
                        break
                    head += data
                conn.sendall(self.reply)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes the accept (close does not)
        self.listener.close()
        self.thread.join(WAIT)


@pytest.mark.parametrize("mode", ["record", "replay-or-forward"])
@pytest.mark.parametrize(
    "reply",
    [b"HTTP/1.1 2OO OK\r\nContent-Length: 0\r\n\r\n",  # an invalid status line
     b"HTTP/1.1 200 OK\r\nContent-Le",  # half a head, then the close
     b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n"],  # the head, then the close
)  # fmt: skip
def test_an_origin_breaking_http_is_a_502_not_the_clients_400(
    gateway: MakeGateway, tmp_path: Path, mode: str, reply: bytes
) -> None:
    """A head forwarded already (not recording) can only be cut short, as before."""
    raw = RawOrigin(reply)
    try:
        if mode != "record" and reply.endswith(b"\r\n\r\n") and b"200" in reply:
            with pytest.raises(http.client.IncompleteRead):
                proxy_get(gateway(mode).port, f"http://127.0.0.1:{raw.port}/x")
            return
        status, fields, _ = proxy_get(gateway(mode).port, f"http://127.0.0.1:{raw.port}/x")
    finally:
        raw.close()
    assert status == 502 and fields["X-Shed-Error"] == "CONNECT_FAILED", (status, fields)
    assert _entries(tmp_path) == 0
