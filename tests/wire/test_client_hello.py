from __future__ import annotations

import ssl

import pytest
from hellos import (
    REAL,
    TLS12,
    TLS13,
    alpn,
    built_hello,
    extension,
    handshake_message,
    real_hello,
    records,
    sni,
    vector16,
)  # fmt: skip
from hypothesis import given, settings
from hypothesis import strategies as st

from splice.errors import ProtocolError
from splice.wire.client_hello import MAX_HELLO, Hello, parse_client_hello

#: every test runs twice: on the Python walk alone, and with the C scanner in front
pytestmark = pytest.mark.usefixtures("hello_scanner")

LAWS = settings(max_examples=150, deadline=None)


def outcome(buf: bytes) -> Hello | str | None:
    try:
        return parse_client_hello(buf)
    except ProtocolError as e:
        return e.code


class TestParseClientHello:
    def test_tls13_hello_gives_the_server_name_and_alpn(self) -> None:
        hello = real_hello("web.alice.shed.example", ("h2", "http/1.1"))
        assert parse_client_hello(hello) == Hello(
            "web.alice.shed.example", ("h2", "http/1.1"), len(hello)
        )

    def test_tls12_hello_gives_the_server_name_and_alpn(self) -> None:
        hello = real_hello("web.alice.shed.example", ("http/1.1",), TLS12)
        assert parse_client_hello(hello) == Hello(
            "web.alice.shed.example", ("http/1.1",), len(hello)
        )

    @pytest.mark.parametrize("version", [TLS12, TLS13])
    def test_hello_without_sni_gives_no_name(self, version: ssl.TLSVersion) -> None:
        hello = real_hello(None, (), version)
        assert parse_client_hello(hello) == Hello(None, (), len(hello))

    def test_hello_in_a_bytearray_or_memoryview_gives_the_same_result(self) -> None:
        hello = REAL[0]
        assert parse_client_hello(bytearray(hello)) == parse_client_hello(memoryview(hello))

    def test_length_stops_at_the_end_of_the_hello_records(self) -> None:
        hello = REAL[0]
        change_cipher_spec = b"\x14\x03\x03\x00\x01\x01"
        result = parse_client_hello(hello + change_cipher_spec + b"\x17\x03\x03\x00\x10")
        assert result == parse_client_hello(hello)

    @pytest.mark.parametrize(
        "cuts", [[1], [2], [3], [4], [1, 2, 3], [100], [7, 64, 65, 300], list(range(1, 40))]
    )
    def test_hello_refragmented_into_records_gives_the_same_result(self, cuts: list[int]) -> None:
        whole = parse_client_hello(REAL[0])
        assert whole is not None
        split = records(handshake_message(REAL[0]), cuts)
        assert parse_client_hello(split) == whole._replace(length=len(split))

    def test_every_proper_prefix_needs_more(self) -> None:
        for hello in (REAL[0], records(handshake_message(REAL[1]), [2, 50, 51])):
            assert all(parse_client_hello(hello[:n]) is None for n in range(len(hello)))

    def test_name_is_lower_cased_without_a_trailing_dot(self) -> None:
        hello = built_hello(sni(b"Web.Alice.SHED.example."))
        assert parse_client_hello(hello) == Hello("web.alice.shed.example", (), len(hello))

    def test_hello_without_an_extension_block_gives_no_name(self) -> None:
        hello = built_hello(None)
        assert parse_client_hello(hello) == Hello(None, (), len(hello))

    def test_unknown_extensions_and_name_types_are_skipped(self) -> None:
        hello = built_hello(extension(0xFF01, b"\x00") + sni(b"opaque", name_type=7))
        assert parse_client_hello(hello) == Hello(None, (), len(hello))

    def test_unprintable_alpn_bytes_are_escaped_for_the_log(self) -> None:
        result = parse_client_hello(built_hello(alpn(b"h2", b"a b\xff")))
        assert result is not None
        assert result.alpn == ("h2", "a\\x20b\\xff")

    @pytest.mark.parametrize(
        ("buf", "message"),
        [
            (b"\x80\x2e\x01\x00\x02\x00\x15\x00\x00\x00\x10", "SSLv2"),
            (b"GET / HTTP/1.1\r\nHost: web.alice\r\n\r\n", "not a TLS handshake"),
            (b"\x15\x03\x03\x00\x02\x02\x28", "alert"),
            (b"\x16\x02\x00", "not a TLS record"),
            (b"\x16\x03\x01\x00\x00", "out of range"),
            (b"\x16\x03\x01\x40\x01", "out of range"),
            (b"\x16\x03\x01\x00\x04\x02\x00\x00\x00", "not a ClientHello"),
            (b"\x16\x03\x01\x00\x04\x01\x00\x00\x01\x17\x03\x03", "interrupted"),
            (b"\x16\x03\x01\x00\x04\x01\x00\x00\x01\x15", "alert"),
            (b"\x16\x03\x01\x00\x06\x01\x00\x00\x01\x00\x00", "data follows"),
            (b"\x16\x03\x01\x00\x02\x01\x00\x16\x03\x01\x00\x04\x00\x01\x00\x00", "data follows"),
        ],
    )
    def test_bytes_that_cannot_start_a_hello_are_rejected_early(
        self, buf: bytes, message: str
    ) -> None:
        with pytest.raises(ProtocolError, match=message) as e:
            parse_client_hello(buf)
        assert e.value.code == "BAD_REQUEST"

    @pytest.mark.parametrize(
        "hello",
        [
            built_hello(session_id=bytes(33)),
            built_hello(suites=b""),
            built_hello(suites=b"\x13\x01\x13"),
            built_hello(compression=b""),
            built_hello(b"", trailer=b"\x00"),
            built_hello(extension(10, b"\x00\x02")[:-1]),
            built_hello(extension(10, b"") + extension(10, b"")),
            built_hello(sni(b"a") + sni(b"b")),
            built_hello(extension(0, b"")),
            built_hello(extension(0, b"\x00\x00")),
            built_hello(extension(0, b"\x00\x05\x00\x00\x01a")),
            built_hello(extension(0, b"\x00\x04\x00\x00\x01a\x00")),
            built_hello(sni(b"a.example", b"b.example")),
            built_hello(alpn()),
            built_hello(alpn(b"h2", b"")),
            built_hello(extension(16, b"\x00\x03\x05h2")),
            records(b"\x01\x00\x00\x02\x03\x03"),
            built_hello(b"\x00\x0a"),
            built_hello(extension(0, vector16(b"\x00\x00"))),
            built_hello(extension(0, vector16(b"\x00\x00\x05a"))),
        ],
        ids=[
            "long-session-id",
            "no-cipher-suites",
            "odd-cipher-suites",
            "no-compression",
            "data-after-extensions",
            "extension-overruns-block",
            "repeated-extension",
            "repeated-sni",
            "empty-sni-extension",
            "empty-name-list",
            "name-list-overruns",
            "name-list-underruns",
            "two-host-names",
            "empty-alpn-list",
            "empty-alpn-name",
            "alpn-name-overruns",
            "truncated-body",
            "extension-header-cut",
            "name-entry-cut",
            "name-overruns-list",
        ],
    )
    def test_malformed_hello_is_a_bad_request(self, hello: bytes) -> None:
        with pytest.raises(ProtocolError) as e:
            parse_client_hello(hello)
        assert e.value.code == "BAD_REQUEST"

    def test_a_message_that_ends_inside_any_field_is_an_overrun(self) -> None:
        """Cut the body after every byte and fix up the lengths: each field's length
        check must notice. Only the cut after the compression methods is a whole hello
        (with no extension block)."""
        ext = sni(b"a.example") + alpn(b"h2") + extension(10, b"\x00\x02\x00\x1d")
        whole = handshake_message(built_hello(ext, session_id=bytes(8)))
        body = whole[4:]
        no_extensions = 2 + 32 + 1 + 8 + 2 + 2 + 1 + 1
        for cut in range(len(body)):
            message = b"\x01" + cut.to_bytes(3, "big") + body[:cut]
            if cut == no_extensions:
                assert parse_client_hello(records(message)) == Hello(None, (), cut + 9)
                continue
            with pytest.raises(ProtocolError) as e:
                parse_client_hello(records(message))
            assert e.value.code == "BAD_REQUEST", cut

    @pytest.mark.parametrize(
        "name",
        [b"", b".", b"a..b", b"caf\xc3\xa9.example", b"a\x00b", b"a b", b"a/b", b"a:443",
         b"x" * 64 + b".example", b"a." * 127 + b"a", b"*.example"],
    )  # fmt: skip
    def test_server_name_that_is_not_a_host_name_is_rejected(self, name: bytes) -> None:
        with pytest.raises(ProtocolError, match="not a host name"):
            parse_client_hello(built_hello(sni(name)))

    def test_longest_valid_name_is_accepted(self) -> None:
        name = ".".join(["x" * 63] * 3 + ["y" * 61])
        result = parse_client_hello(built_hello(sni(name.encode())))
        assert result is not None
        assert result.server_name == name

    def test_hello_longer_than_max_size_is_too_large(self) -> None:
        hello = REAL[0]
        assert parse_client_hello(hello, max_size=len(hello)) is not None
        with pytest.raises(ProtocolError) as e:
            parse_client_hello(hello, max_size=len(hello) - 1)
        assert e.value.code == "HEAD_TOO_LARGE"

    @pytest.mark.parametrize(
        ("buf", "max_size"),
        [
            (b"\x16\x03\x01\x40\x00", MAX_HELLO),
            (b"\x16\x03\x01\x00\x04\x01\x00\x40\x00", MAX_HELLO),
            (b"\x16\x03\x01\x00\x04\x01\x00\x00\x20", 40),
            (b"\x16\x03\x01\x00\x01\x01\x16\x03\x01\x00\x01\x00\x16\x03\x01\x00\x02\x00\x20", 40),
        ],
    )
    def test_too_large_is_known_from_the_headers_alone(self, buf: bytes, max_size: int) -> None:
        with pytest.raises(ProtocolError) as e:
            parse_client_hello(buf, max_size)
        assert e.value.code == "HEAD_TOO_LARGE"

    @LAWS
    @given(hello=st.sampled_from(REAL), data=st.data())
    def test_any_prefix_needs_more_or_gives_the_full_answer(
        self, hello: bytes, data: st.DataObject
    ) -> None:
        cut = data.draw(st.integers(0, len(hello)))
        assert parse_client_hello(hello[:cut]) in (None, parse_client_hello(hello))

    @LAWS
    @given(
        hello=st.sampled_from(REAL),
        cuts=st.lists(st.integers(1, 600), max_size=12),
        version=st.sampled_from([0x0300, 0x0301, 0x0303]),
    )
    def test_any_fragmentation_gives_the_same_hello(
        self, hello: bytes, cuts: list[int], version: int
    ) -> None:
        message = handshake_message(hello)
        split = records(message, [c for c in cuts if c < len(message)], version)
        whole = parse_client_hello(hello)
        assert whole is not None
        assert parse_client_hello(split) == whole._replace(length=len(split))

    @LAWS
    @given(
        hello=st.sampled_from(REAL),
        chunks=st.lists(st.integers(1, 200), min_size=1, max_size=30),
        tail=st.binary(max_size=20),
    )
    def test_feeding_a_growing_buffer_in_any_chunks_gives_the_whole_answer(
        self, hello: bytes, chunks: list[int], tail: bytes
    ) -> None:
        stream, buf, pos, result = hello + tail, bytearray(), 0, None
        while result is None and pos < len(stream):
            step = chunks[len(buf) % len(chunks)]
            buf += stream[pos : pos + step]
            pos += step
            result = parse_client_hello(buf)
        assert result == parse_client_hello(hello)

    @LAWS
    @given(st.binary(max_size=300))
    def test_arbitrary_bytes_parse_need_more_or_raise_protocol_error(self, buf: bytes) -> None:
        outcome(buf)

    @LAWS
    @given(st.binary(max_size=300))
    def test_arbitrary_bytes_in_a_handshake_record_never_raise_anything_else(
        self, body: bytes
    ) -> None:
        outcome(records(b"\x01" + len(body).to_bytes(3, "big") + body))

    @LAWS
    @given(
        hello=st.sampled_from(REAL),
        edits=st.lists(st.tuples(st.integers(0, 600), st.integers(0, 255)), max_size=4),
        data=st.data(),
    )
    def test_a_corrupted_hello_answers_the_same_from_any_prefix(
        self, hello: bytes, edits: list[tuple[int, int]], data: st.DataObject
    ) -> None:
        corrupted = bytearray(hello)
        for at, value in edits:
            corrupted[at % len(hello)] = value
        cut = data.draw(st.integers(0, len(corrupted)))
        whole = outcome(bytes(corrupted))
        assert outcome(bytes(corrupted[:cut])) in (None, whole)
