"""X-Forwarded-* / Forwarded: incoming copies removed, ours appended, the rest untouched."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from splice.wire.forwarded import rewrite_forwarded

HEAD = (
    b"GET / HTTP/1.1\r\nX-Forwarded-For: 6.6.6.6\r\nHost: a.srv.test\r\n"
    b"x-forwarded-proto:https\r\nFORWARDED: for=1.1.1.1\r\nX-Forwarded-Host : evil\r\n"
    b"Accept: */*\r\n\r\n"
)


FIELDS = [b"Accept: */*", b"X-A: 1", b"X-Forwarded-For: x", b"Forwarded: for=y", b"User-Agent: t"]


class TestRewrite:
    def test_forged_copies_are_removed_and_ours_appended(self) -> None:
        out = rewrite_forwarded(HEAD, "10.0.0.7", b"a.srv.test", b"http")
        assert out == (
            b"GET / HTTP/1.1\r\nHost: a.srv.test\r\nAccept: */*\r\n"
            b"X-Forwarded-For: 10.0.0.7\r\nX-Forwarded-Proto: http\r\n"
            b"X-Forwarded-Host: a.srv.test\r\n\r\n"
        )

    def test_rfc_7239_quotes_an_ipv6_node(self) -> None:
        out = rewrite_forwarded(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", "::1", b"a", b"http",
                                rfc7239=True)  # fmt: skip
        assert b'Forwarded: for="[::1]";proto=http;host="a"\r\n\r\n' in out

    def test_underscore_spellings_and_the_fields_frameworks_read_beside_ours_go_too(
        self,
    ) -> None:
        # WSGI/CGI/PHP read X_Forwarded_For and X-Forwarded_For as HTTP_X_FORWARDED_FOR,
        # the same variable as ours, and the forged address would come first
        forged = [
            b"X_Forwarded_For: 6.6.6.6", b"x-forwarded_for: 6.6.6.6", b"X_FORWARDED-HOST: evil",
            b"X_Forwarded_Proto: https", b"X-Forwarded-Port: 1", b"x_forwarded_prefix: /evil",
            b"X-Real-IP: 6.6.6.6", b"X_Real_Ip: 6.6.6.6",
        ]  # fmt: skip
        head = b"GET / HTTP/1.1\r\nHost: a\r\n" + b"".join(f + b"\r\n" for f in forged)
        out = rewrite_forwarded(head + b"X-Trace_Id: 7\r\n\r\n", "1.2.3.4", b"a", b"http")
        assert out == (
            b"GET / HTTP/1.1\r\nHost: a\r\nX-Trace_Id: 7\r\nX-Forwarded-For: 1.2.3.4\r\n"
            b"X-Forwarded-Proto: http\r\nX-Forwarded-Host: a\r\n\r\n"
        )

    def test_a_field_that_only_starts_like_ours_is_kept(self) -> None:
        head = b"GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-Fort: keep\r\n\r\n"
        assert b"X-Forwarded-Fort: keep\r\n" in rewrite_forwarded(head, "1.2.3.4", b"a", b"http")

    @given(st.lists(st.sampled_from(FIELDS), max_size=8))
    def test_exactly_one_of_each_of_ours_and_every_other_field_survives(
        self, fields: list[bytes]
    ) -> None:
        head = b"GET / HTTP/1.1\r\nHost: a\r\n" + b"".join(f + b"\r\n" for f in fields) + b"\r\n"
        out = rewrite_forwarded(head, "1.2.3.4", b"a", b"http")
        assert out.count(b"X-Forwarded-For:") == 1 and out.endswith(b"\r\n\r\n")
        kept = [f for f in fields if not f.startswith((b"X-Forwarded", b"Forwarded"))]
        assert all(out.count(f + b"\r\n") == kept.count(f) for f in kept)
