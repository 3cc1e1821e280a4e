from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from splice.errors import BackendError, RouteError, SpliceError
from splice.wire.connect_api import (
    MAX_BODY,
    MAX_HEAD,
    MAX_MESSAGE,
    parse_connect_response,
    render_connect_request,
)

SWITCHED = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: shed-tcp\r\nConnection: Upgrade\r\n\r\n"


def answer(status: int, code: str, message: str, reason: str = "X") -> bytes:
    body = json.dumps({"error": {"code": code, "message": message}}).encode() + b"\n"
    head = f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n"
    return (head + f"Content-Length: {len(body)}\r\n\r\n").encode() + body


def raised(buf: bytes, *, eof: bool = False) -> SpliceError:
    with pytest.raises(SpliceError) as e:
        parse_connect_response(buf, eof=eof)
    return e.value


class TestRender:
    def test_renders_the_upgrade_request(self) -> None:
        assert render_connect_request("web", 3000, "127.0.0.1:8080") == (
            b"GET /api/sheds/web/connect/3000 HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n"
            b"Connection: Upgrade\r\nUpgrade: shed-tcp\r\n\r\n"
        )

    @pytest.mark.parametrize("shed", ["", "Web", "../x", "a b", "a/b", "9lives", "x" * 64, "a-"])
    def test_refuses_names_shed_server_cannot_have(self, shed: str) -> None:
        with pytest.raises(RouteError) as e:
            render_connect_request(shed, 80, "h")
        assert e.value.code == "SHED_NOT_FOUND"

    @pytest.mark.parametrize("port", [0, -1, 65536, True])
    def test_refuses_invalid_ports(self, port: int) -> None:
        with pytest.raises(RouteError) as e:
            render_connect_request("web", port, "h")
        assert e.value.code == "INVALID_PORT"

    @pytest.mark.parametrize("host", ["", "a\r\nX: y", "a b", "h:123456"])
    def test_refuses_hosts_that_would_break_the_head(self, host: str) -> None:
        with pytest.raises(SpliceError) as e:
            render_connect_request("web", 80, host)
        assert e.value.code == "INTERNAL_ERROR"

    def test_accepts_ipv6_hosts(self) -> None:
        assert b"Host: [::1]:8080\r\n" in render_connect_request("web", 80, "[::1]:8080")


class TestParseSwitch:
    def test_returns_101_and_the_bytes_after_the_head(self) -> None:
        assert parse_connect_response(SWITCHED + b"\x16\x03\x01") == (101, b"\x16\x03\x01")

    def test_needs_more_until_the_head_is_complete(self) -> None:
        for i in range(len(SWITCHED)):
            assert parse_connect_response(SWITCHED[:i]) is None
        assert parse_connect_response(SWITCHED) == (101, b"")

    @given(st.binary(max_size=64), st.integers(0, 200))
    def test_any_split_gives_the_same_answer(self, tail: bytes, cut: int) -> None:
        whole = SWITCHED + tail
        cut = min(cut, len(whole))
        first = parse_connect_response(whole[:cut])
        assert first is None or first == (101, whole[len(SWITCHED) : cut])
        assert parse_connect_response(whole) == (101, tail)

    def test_skips_interim_answers(self) -> None:
        assert parse_connect_response(b"HTTP/1.1 100 Continue\r\n\r\n" + SWITCHED) == (101, b"")

    def test_accepts_bare_lf_heads(self) -> None:
        assert parse_connect_response(b"HTTP/1.1 101 OK\nUpgrade: shed-tcp\n\nab") == (101, b"ab")


class TestParseErrors:
    @pytest.mark.parametrize(
        ("status", "code", "cls", "ours"),
        [
            (400, "INVALID_PORT", RouteError, "INVALID_PORT"),
            (404, "SHED_NOT_FOUND", RouteError, "SHED_NOT_FOUND"),
            (502, "CONNECT_FAILED", BackendError, "CONNECT_FAILED"),
            (503, "SHED_NOT_RUNNING", BackendError, "SHED_NOT_RUNNING"),
            (500, "INTERNAL_ERROR", BackendError, "CONNECT_FAILED"),
            (401, "UNAUTHORIZED", BackendError, "CONNECT_FAILED"),
            (200, "", BackendError, "CONNECT_FAILED"),
            (400, "INVALID_SHED_NAME", RouteError, "SHED_NOT_FOUND"),
        ],
    )
    def test_maps_statuses_and_keeps_the_json_message(
        self, status: int, code: str, cls: type[SpliceError], ours: str
    ) -> None:
        e = raised(answer(status, code, "Shed 'web' says no"))
        assert type(e) is cls and e.code == ours and e.message == "Shed 'web' says no"

    def test_waits_for_the_whole_body(self) -> None:
        whole = answer(404, "SHED_NOT_FOUND", "gone")
        for i in range(len(whole) - 1):
            assert parse_connect_response(whole[:i]) is None
        assert raised(whole).message == "gone"

    def test_a_truncated_body_at_eof_still_maps_the_status(self) -> None:
        e = raised(answer(503, "SHED_NOT_RUNNING", "stopped")[:-3], eof=True)
        assert e.code == "SHED_NOT_RUNNING" and "503" in e.message

    def test_does_not_wait_for_bodies_it_would_not_read(self) -> None:
        big = f"HTTP/1.1 502 Bad Gateway\r\nContent-Length: {MAX_BODY + 1}\r\n\r\n".encode()
        assert raised(big).code == "CONNECT_FAILED"
        unframed = b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\n\r\npartial"
        assert raised(unframed).code == "SHED_NOT_RUNNING"

    def test_reads_chunked_bodies_but_bounds_them(self) -> None:
        body = json.dumps({"error": {"code": "CONNECT_FAILED", "message": "nope"}}).encode()
        head = b"HTTP/1.1 502 Bad Gateway\r\nTransfer-Encoding: chunked\r\n\r\n"
        chunked = head + b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
        assert parse_connect_response(chunked[:-5]) is None
        assert raised(chunked).message == "nope"
        huge = head + b"%x\r\n" % (MAX_BODY + 1) + b"x" * (MAX_BODY + 1)
        assert raised(huge).code == "CONNECT_FAILED"

    def test_plain_text_bodies_give_a_generic_message(self) -> None:
        text = b"HTTP/1.1 404 Not Found\r\nContent-Length: 19\r\n\r\n404 page not found\n"
        e = raised(text)
        assert e.code == "SHED_NOT_FOUND" and "HTTP 404" in e.message

    def test_messages_are_bounded_and_single_line(self) -> None:
        e = raised(answer(502, "CONNECT_FAILED", "line1\r\nline2" + "x" * 1000))
        assert "\n" not in e.message and len(e.message) <= MAX_MESSAGE
        assert e.message.startswith("line1 line2")

    def test_json_without_an_error_object_gives_a_generic_message(self) -> None:
        body = b'{"error": "flat string"}'
        head = f"HTTP/1.1 502 Bad Gateway\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        e = raised(head + body)
        assert e.code == "CONNECT_FAILED" and "HTTP 502" in e.message

    def test_absurdly_nested_json_is_just_no_message(self) -> None:
        body = b"[" * 50_000
        head = f"HTTP/1.1 404 Not Found\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        assert raised(head + body).code == "SHED_NOT_FOUND"


class TestParseBroken:
    def test_a_head_past_the_limit_is_refused(self) -> None:
        long_head = b"HTTP/1.1 101 Switching Protocols\r\nX: " + b"a" * MAX_HEAD
        e = raised(long_head)
        assert type(e) is BackendError and e.code == "CONNECT_FAILED"

    @pytest.mark.parametrize("buf", [b"SSH-2.0-OpenSSH\r\n\r\n", b"HTTP/1.1 abc\r\n\r\n"])
    def test_garbage_is_connect_failed(self, buf: bytes) -> None:
        assert raised(buf).code == "CONNECT_FAILED"

    @pytest.mark.parametrize("buf", [b"", b"HTTP/1.1 10"])
    def test_eof_before_an_answer_is_connect_failed(self, buf: bytes) -> None:
        e = raised(buf, eof=True)
        assert e.code == "CONNECT_FAILED" and "closed" in e.message

    def test_empty_input_without_eof_needs_more(self) -> None:
        assert parse_connect_response(b"") is None
