"""The response-head scanner that decides whether an upstream connection can be reused.

Laws against h11 (the reference): on every head the scanner takes, h11 ends the
response exactly where the scanner says it ends, and a response the scanner calls
keep-alive leaves h11's connection reusable too. Every test runs twice: with the regex
scanner and with the C one (``scanner``).
"""

from __future__ import annotations

import h11
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from splice.errors import ProtocolError
from splice.wire.http_response import (
    Body,
    ResponseHead,
    parse_response_head,
    without_connection_fields,
)

pytestmark = pytest.mark.usefixtures("scanner")

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Type: text/plain\r\n\r\nhello"


def parse(data: bytes, head_request: bool = False) -> ResponseHead:
    got = parse_response_head(data, head_request=head_request)
    assert got is not None
    return got


class TestFraming:
    def test_content_length_frames_the_body_and_keeps_the_connection(self) -> None:
        r = parse(OK)
        assert (r.status, r.body, r.length, r.keep_alive, r.interim) == (
            200, Body.LENGTH, 5, True, False,
        )  # fmt: skip
        assert OK[r.size :] == b"hello"

    def test_a_response_head_shows_its_fields_when_printed(self) -> None:
        shown = repr(parse(OK))
        assert shown.startswith("ResponseHead(") and "status=200" in shown
        assert "length=5" in shown and "keep_alive=True" in shown

    def test_the_client_is_told_the_connection_closes(self) -> None:
        r = parse(OK)
        assert r.raw == (
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Type: text/plain\r\n"
            b"Connection: close\r\n\r\n"
        )

    def test_the_vms_own_connection_fields_are_replaced(self) -> None:
        data = (
            b"HTTP/1.1 200 OK\r\nconnection: keep-alive\r\n"
            b"Content-Length: 0\r\nCONNECTION: x\r\n\r\n"
        )
        r = parse(data)
        assert r.raw == b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        assert r.keep_alive

    def test_a_connection_kept_open_gets_the_head_as_the_vm_sent_it(self) -> None:
        data = b"HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nContent-Length: 5\r\n\r\nhello"
        r = parse_response_head(data, head_request=False, close=False)
        assert r is not None and r.raw == data[:-5] and r.keep_alive

    def test_a_head_with_no_fields(self) -> None:
        r = parse(b"HTTP/1.1 204 No Content\r\n\r\n")
        assert (r.body, r.keep_alive) == (Body.NONE, True)
        assert r.raw == b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n"

    def test_chunked(self) -> None:
        r = parse(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        assert (r.body, r.keep_alive) == (Body.CHUNKED, True)

    def test_no_length_runs_to_close_and_is_not_reused(self) -> None:
        r = parse(b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\n\r\n<html>")
        assert (r.body, r.keep_alive) == (Body.UNTIL_CLOSE, False)

    @pytest.mark.parametrize("status", [204, 304])
    def test_no_body_statuses(self, status: int) -> None:
        r = parse(b"HTTP/1.1 %d X\r\nContent-Length: 10\r\n\r\n" % status)
        assert (r.body, r.length) == (Body.NONE, 0)

    def test_a_head_request_has_no_body_whatever_the_length_says(self) -> None:
        r = parse(OK, head_request=True)
        assert (r.body, r.keep_alive) == (Body.NONE, True)

    def test_an_interim_response_may_say_connection(self) -> None:
        r = parse(b"HTTP/1.1 103 Early Hints\r\nConnection: keep-alive\r\nLink: </a>\r\n\r\n")
        assert r.interim and r.status == 103

    def test_interim_responses_pass_unchanged(self) -> None:
        data = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n"
        r = parse(data)
        assert r.interim and r.body is Body.NONE and r.raw == b"HTTP/1.1 100 Continue\r\n\r\n"

    def test_101_is_a_tunnel_and_not_reused(self) -> None:
        data = (
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
        )
        r = parse(data)
        assert (r.body, r.keep_alive, r.interim, r.raw) == (Body.UNTIL_CLOSE, False, False, data)

    @pytest.mark.parametrize(
        "head",
        [
            b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nConnection: keep-alive, Close\r\nContent-Length: 0\r\n\r\n",
            b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n",
        ],
    )
    def test_the_vm_closing_means_no_reuse(self, head: bytes) -> None:
        assert not parse(head).keep_alive

    def test_a_reason_may_be_missing(self) -> None:
        assert parse(b"HTTP/1.1 200\r\nContent-Length: 0\r\n\r\n").status == 200


class TestNotTaken:
    def test_incomplete_is_none(self) -> None:
        assert parse_response_head(OK[:20], head_request=False) is None
        assert parse_response_head(b"", head_request=False) is None

    @pytest.mark.parametrize(
        "data",
        [
            b"HTTP/1.1 200 OK\nContent-Length: 0\n\n",
            b"HTTP/2 200 OK\r\n\r\n",
            b"HTTP/1.1 999 OK\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nbad header\r\n\r\n",
            b"HTTP/1.1 200 OK\r\n folded: x\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 1, 1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 1234567890123456789\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: \xd9\xa1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: \r\n\r\n",
            b"HTTP/1.1 103 Early Hints\r\nContent-Length: 0\r\n\r\n",
            b"HTTP/1.1 100 Continue\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
        ],
    )
    def test_anything_unusual_is_relayed_blind(self, data: bytes) -> None:
        with pytest.raises(ProtocolError):
            parse_response_head(data, head_request=False)

    def test_an_oversized_head_is_refused(self) -> None:
        big = b"HTTP/1.1 200 OK\r\nX: " + b"a" * 2000
        with pytest.raises(ProtocolError):
            parse_response_head(big, head_request=False, max_head=1024)
        with pytest.raises(ProtocolError):
            parse_response_head(big + b"\r\n\r\n", head_request=False, max_head=1024)


def test_request_connection_fields_are_dropped() -> None:
    raw = b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\nAccept: */*\r\n\r\n"
    assert without_connection_fields(raw) == b"GET / HTTP/1.1\r\nHost: a\r\nAccept: */*\r\n\r\n"
    assert without_connection_fields(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").endswith(b"a\r\n\r\n")


# -- laws against h11 ------------------------------------------------------------

_FIELDS = st.sampled_from(
    [
        b"Content-Length: 0",
        b"Content-Length: 3",
        b"Content-Length: 17",
        b"Transfer-Encoding: chunked",
        b"Connection: close",
        b"Connection: keep-alive",
        b"Connection: Upgrade",
        b"Upgrade: websocket",
        b"Server: x",
        b"Content-Type: text/plain; charset=utf-8",
        b"Keep-Alive: timeout=5",
    ]
)
_STATUS = st.sampled_from([100, 103, 200, 201, 204, 301, 304, 404, 500, 503])


def h11_end(data: bytes, head_request: bool) -> tuple[int, bool] | None:
    """Where h11 ends the response in ``data`` (bytes consumed), and if it keeps alive."""
    conn = h11.Connection(h11.CLIENT)
    conn.send(
        h11.Request(method="HEAD" if head_request else "GET", target="/", headers=[("Host", "a")])
    )
    conn.send(h11.EndOfMessage())
    conn.receive_data(data)
    try:
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                return None
            if isinstance(event, h11.EndOfMessage):
                break
    except h11.RemoteProtocolError:
        return None
    return len(data) - len(conn.trailing_data[0]), conn.their_state is h11.DONE


@settings(max_examples=400)
@given(
    status=_STATUS,
    minor=st.sampled_from([b"0", b"1"]),
    fields=st.lists(_FIELDS, max_size=5),
    head_request=st.booleans(),
)
def test_the_scanner_ends_every_response_where_h11_does(
    status: int, minor: bytes, fields: list[bytes], head_request: bool
) -> None:
    head = b"HTTP/1.%s %d X\r\n" % (minor, status) + b"".join(f + b"\r\n" for f in fields) + b"\r\n"
    try:
        r = parse_response_head(head, head_request=head_request)
    except ProtocolError:
        return  # relayed blind: nothing is claimed
    assert r is not None and r.size == len(head)
    if r.interim or r.body is Body.UNTIL_CLOSE:
        return
    body = {Body.NONE: b"", Body.LENGTH: b"x" * r.length, Body.CHUNKED: b"3\r\nabc\r\n0\r\n\r\n"}
    after = b"HTTP/1.1 200 OK\r\n"
    ended = h11_end(head + body[r.body] + after, head_request)
    assert ended is not None, head
    assert ended[0] == len(head) + len(body[r.body])
    if r.keep_alive:
        assert ended[1], head
