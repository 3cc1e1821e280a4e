"""The request-head reader: the fast scanner, its h11 fallback, and the laws between them.

Every test runs twice: with the regex scanner and with the C one (``scanner``).
"""

from __future__ import annotations

import h11
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from splice.errors import ProtocolError
from splice.wire.forwarded import _FORWARDED_LINE
from splice.wire.http_head import MAX_HEAD, Head, parse_head

GET = b"GET /x?y=1 HTTP/1.1\r\nHost: Alpha.srv.test:8081\r\nAccept: */*\r\n\r\n"
POST_CL = b"POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello"
POST_CHUNKED = (
    b"POST /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
)
pytestmark = pytest.mark.usefixtures("scanner")

UPGRADE = (
    b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, Upgrade\r\nUpgrade: websocket\r\n\r\n"
)


def h11_view(data: bytes) -> tuple[bytes, bytes, bytes | None, int | None, bool] | None:
    """What h11 (the reference) reads from a head: method, target, host, length, chunked."""
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
    conn.receive_data(data)
    try:
        event = conn.next_event()
    except h11.RemoteProtocolError:
        return None
    if not isinstance(event, h11.Request):
        return None
    fields = {n: v for n, v in event.headers}
    cl = fields.get(b"content-length")
    return (
        event.method,
        event.target,
        fields.get(b"host"),
        None if cl is None else int(cl),
        fields.get(b"transfer-encoding") == b"chunked",
    )


class TestFastPath:
    def test_a_plain_get_gives_method_target_host_and_no_body(self) -> None:
        head = parse_head(GET)
        assert head is not None
        assert (head.method, head.target, head.version) == (b"GET", b"/x?y=1", b"1.1")
        assert head.host == b"alpha.srv.test:8081"
        assert (head.content_length, head.chunked, head.upgrade, head.close) == (
            None, False, False, False,
        )  # fmt: skip
        assert head.raw == GET and head.length == len(GET)

    def test_the_bytes_after_the_head_are_left_for_the_body(self) -> None:
        head = parse_head(POST_CL)
        assert head is not None
        assert head.content_length == 5 and POST_CL[head.length :] == b"hello"

    def test_chunked_framing_is_recognised(self) -> None:
        head = parse_head(POST_CHUNKED)
        assert head is not None and head.chunked and head.content_length is None

    def test_an_upgrade_needs_both_the_connection_token_and_the_upgrade_field(self) -> None:
        head = parse_head(UPGRADE)
        assert head is not None and head.upgrade
        only = parse_head(b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n\r\n")
        assert only is not None and not only.upgrade

    def test_connection_close_and_http_1_0_end_the_connection(self) -> None:
        head = parse_head(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        assert head is not None and head.close
        old = parse_head(b"GET / HTTP/1.0\r\n\r\n")
        assert old is not None and old.close and old.host is None

    def test_expect_continue_and_json_accept_are_noted(self) -> None:
        head = parse_head(
            b"PUT / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n"
            b"Accept: application/json\r\nContent-Length: 0\r\n\r\n"
        )
        assert head is not None and head.expect_continue and head.wants_json

    def test_a_head_shows_its_fields_when_printed(self) -> None:
        shown = repr(parse_head(GET))
        assert shown.startswith("Head(") and "host=b'alpha.srv.test:8081'" in shown
        assert "method=b'GET'" in shown and f"length={len(GET)}" in shown

    def test_connect_needs_no_host_field(self) -> None:
        head = parse_head(b"CONNECT pypi.org:443 HTTP/1.1\r\n\r\n")
        assert head is not None and head.method == b"CONNECT" and head.host is None


class TestIncomplete:
    @pytest.mark.parametrize("cut", [0, 1, 10, len(GET) - 1])
    def test_a_head_cut_anywhere_needs_more(self, cut: int) -> None:
        assert parse_head(GET[:cut]) is None

    def test_a_head_without_its_end_past_the_limit_is_431(self) -> None:
        big = b"GET / HTTP/1.1\r\nHost: a\r\nX: " + b"a" * 2000
        with pytest.raises(ProtocolError) as e:
            parse_head(big, max_head=1024)
        assert e.value.code == "HEAD_TOO_LARGE"

    def test_a_complete_head_longer_than_the_limit_is_431(self) -> None:
        big = b"GET / HTTP/1.1\r\nHost: a\r\nX: " + b"a" * 2000 + b"\r\n\r\n"
        with pytest.raises(ProtocolError) as e:
            parse_head(big, max_head=1024)
        assert e.value.code == "HEAD_TOO_LARGE"


class TestSlowPath:
    def test_bare_lf_heads_go_to_h11_and_come_out_with_crlf(self) -> None:
        head = parse_head(b"GET / HTTP/1.1\nHost: a\nX-A: 1\n\nrest")
        assert head is not None
        assert head.raw == b"GET / HTTP/1.1\r\nHost: a\r\nX-A: 1\r\n\r\n"
        assert head.length == len(b"GET / HTTP/1.1\nHost: a\nX-A: 1\n\n")

    def test_an_incomplete_bare_lf_head_waits(self) -> None:
        assert parse_head(b"GET / HTTP/1.1\nHost: a\n") is None

    def test_h11_rejections_become_400(self) -> None:
        with pytest.raises(ProtocolError) as e:
            parse_head(b"GET / HTTP/1.1\nHost : a\n\n")
        assert e.value.code == "BAD_REQUEST"

    @pytest.mark.parametrize("version", [b"2.0", b"1.2", b"3.1", b"0.9"])
    def test_a_version_other_than_1_0_and_1_1_is_refused_not_rewritten(
        self, version: bytes
    ) -> None:
        # h11 reads any HTTP/d.d; its minor digit alone would make another request
        with pytest.raises(ProtocolError) as e:
            parse_head(b"GET / HTTP/%s\r\nHost: a\r\n\r\n" % version)
        assert e.value.code == "BAD_REQUEST"

    def test_a_head_h11_reads_as_no_request_is_400(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(h11.Connection, "next_event", lambda self: h11.NEED_DATA)
        with pytest.raises(ProtocolError):
            parse_head(b"GET / HTTP/1.1\nHost: a\n\n")


class TestSmuggling:
    @pytest.mark.parametrize(
        "fields",
        [
            b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
            b"Content-Length: 5\r\nContent-Length: 5\r\n",
            b"Content-Length: 5, 5\r\n",
            b"Content-Length: -1\r\n",
            b"Content-Length: 1234567890123456789\r\n",
            b"Transfer-Encoding: gzip, chunked\r\n",
            b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
            b"Host: b\r\n",
            b"X-A: 1\r\n folded\r\n",
            b"X-A: 1\r\n\tfolded\r\n",
        ],
        ids=[
            "cl+te",
            "two-cl",
            "cl-list",
            "cl-negative",
            "cl-19-digits",
            "te-gzip",
            "two-te",
            "two-hosts",
            "obs-fold-sp",
            "obs-fold-tab",
        ],
    )
    def test_ambiguous_framing_is_refused_before_anything_is_sent(self, fields: bytes) -> None:
        with pytest.raises(ProtocolError) as e:
            parse_head(b"POST / HTTP/1.1\r\nHost: a\r\n" + fields + b"\r\n")
        assert e.value.code == "BAD_REQUEST"

    def test_transfer_encoding_in_http_1_0_is_refused(self) -> None:
        with pytest.raises(ProtocolError):
            parse_head(b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n")

    def test_http_1_1_without_host_is_refused(self) -> None:
        with pytest.raises(ProtocolError):
            parse_head(b"GET / HTTP/1.1\r\nAccept: */*\r\n\r\n")

    def test_a_space_before_the_colon_is_refused(self) -> None:
        with pytest.raises(ProtocolError):
            parse_head(b"GET / HTTP/1.1\r\nHost : a\r\n\r\n")


# -- laws -----------------------------------------------------------------------------

_TOKEN_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.!#"
_TOKEN = st.text(alphabet=_TOKEN_CHARS, min_size=1, max_size=12)
_VALUE = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=30)
_FIELD = st.tuples(_TOKEN, _VALUE).map(lambda nv: (nv[0].encode(), nv[1].strip().encode()))
_TARGET = st.sampled_from([b"/", b"/a/b?c=d", b"/port/3000/x", b"http://a.srv.test/x", b"*"])
_METHOD = st.sampled_from([b"GET", b"POST", b"PUT", b"OPTIONS", b"DELETE", b"PATCH"])
_FRAMING = st.sampled_from(
    [[], [(b"Content-Length", b"0")], [(b"Content-Length", b"12")],
     [(b"Transfer-Encoding", b"chunked")], [(b"transfer-encoding", b"Chunked")]]
)  # fmt: skip


@st.composite
def heads(draw: st.DrawFn) -> bytes:
    fields = [(b"Host", b"alpha.srv.test"), *draw(_FRAMING)]
    fields += [f for f in draw(st.lists(_FIELD, max_size=6)) if f[0].lower() not in _SPECIAL]
    fields = draw(st.permutations(fields))
    sep = draw(st.sampled_from([b": ", b":", b":\t", b":  "]))
    lines = [b"%s %s HTTP/1.1" % (draw(_METHOD), draw(_TARGET))]
    lines += [n + sep + v for n, v in fields]
    return b"\r\n".join(lines) + b"\r\n\r\n"


_SPECIAL = {b"host", b"content-length", b"transfer-encoding", b"connection", b"upgrade"}


class TestLaws:
    @settings(max_examples=300, deadline=None)
    @given(heads())
    def test_the_scanner_reads_what_h11_reads(self, data: bytes) -> None:
        head = parse_head(data)
        ref = h11_view(data)
        assert head is not None and ref is not None
        method, target, host, cl, chunked = ref
        assert (head.method, head.target, head.content_length, head.chunked) == (
            method, target, cl, chunked,
        )  # fmt: skip
        assert head.host == (host or b"").lower()
        assert head.raw == data  # the fast path forwards the client's bytes untouched

    @settings(max_examples=200, deadline=None)
    @given(heads(), st.data())
    def test_feeding_a_prefix_needs_more_and_the_whole_gives_the_answer(
        self, data: bytes, pick: st.DataObject
    ) -> None:
        cut = pick.draw(st.integers(0, len(data) - 1))
        assert parse_head(data[:cut]) is None
        assert isinstance(parse_head(data), Head)

    @settings(max_examples=500, deadline=None)
    @given(st.binary(max_size=300))
    def test_any_bytes_parse_wait_or_raise_the_protocol_error(self, data: bytes) -> None:
        try:
            parse_head(data, max_head=1024)
        except ProtocolError:
            pass

    @settings(max_examples=300, deadline=None)
    @given(heads(), st.binary(max_size=40))
    def test_a_head_the_scanner_takes_h11_takes_too(self, data: bytes, junk: bytes) -> None:
        mangled = data[:-4] + junk.replace(b"\n", b"") + b"\r\n\r\n"
        try:
            head = parse_head(mangled)
        except ProtocolError:
            return
        assert head is not None
        if head.raw == mangled[: head.length]:
            assert h11_view(mangled) is not None

    @settings(max_examples=400, deadline=None)
    @given(
        heads(),
        st.lists(
            st.tuples(
                st.sampled_from(
                    [b"X-Forwarded-For", b"x-forwarded-proto", b"X-FORWARDED-HOST",
                     b"Forwarded", b"forwarded", b"X-Forwarded-Fort", b"Forwarded-X",
                     b"X_Forwarded_For", b"x-forwarded_host", b"X-Real-IP", b"x_real-ip",
                     b"X-Forwarded-Prefix", b"X_Forwarded_Portal"]
                ),
                st.sampled_from([b":", b": ", b" :", b"\t:"]),
            ),
            max_size=3,
        ),
        st.booleans(),
    )  # fmt: skip
    def test_a_head_with_a_forwarding_field_says_so(
        self, data: bytes, extra: list[tuple[bytes, bytes]], bare_lf: bool
    ) -> None:
        """``forwarded`` False lets the rewrite skip removing the client's copies: it
        must be False only when the head the VM would get has none to remove."""
        added = b"".join(b"%s%s1.2.3.4\r\n" % (n, sep) for n, sep in extra)
        data = data[:-2] + added + b"\r\n"
        if bare_lf:
            data = data.replace(b"\r\n", b"\n")
        try:
            head = parse_head(data)
        except ProtocolError:
            return
        assert head is not None
        assert head.forwarded == (_FORWARDED_LINE.search(head.raw) is not None), head.raw
