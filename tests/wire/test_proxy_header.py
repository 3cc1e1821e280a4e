from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from splice.errors import ProtocolError
from splice.wire.proxy_header import (
    MAX_V2_PAYLOAD,
    V1_MAX,
    V2_SIGNATURE,
    PP2Type,
    ProxyInfo,
    encode_v1,
    encode_v2,
    maybe_proxy_header,
    parse_proxy_header,
)

LAWS = settings(max_examples=150, deadline=None)
FULL_V6 = ":".join(["ffff"] * 8)
ports = st.integers(0, 0xFFFF)
v4 = st.ip_addresses(v=4).map(str)
v6 = st.ip_addresses(v=6).map(str)
tlvs = st.lists(st.tuples(st.integers(0, 255), st.binary(max_size=40)), max_size=5)


def v2(command: int = 1, family: int = 0x11, payload: bytes = b"", version: int = 2) -> bytes:
    header = bytes([version << 4 | command, family]) + struct.pack("!H", len(payload))
    return V2_SIGNATURE + header + payload


def outcome(buf: bytes) -> ProxyInfo | str | None:
    try:
        return parse_proxy_header(buf)
    except ProtocolError as e:
        return e.code


class TestMaybeProxyHeader:
    @pytest.mark.parametrize("buf", [b"PROXY ", b"PROXY TCP4", V2_SIGNATURE, V2_SIGNATURE + b"!"])
    def test_header_start_is_recognised(self, buf: bytes) -> None:
        assert maybe_proxy_header(buf) is True

    @pytest.mark.parametrize("buf", [b"", b"P", b"PROXY", b"\r\n\r\n", V2_SIGNATURE[:-1]])
    def test_prefix_of_a_header_start_is_undecided(self, buf: bytes) -> None:
        assert maybe_proxy_header(buf) is None

    @pytest.mark.parametrize(
        "buf", [b"\x16\x03\x01", b"GET / HTTP/1.1\r\n", b"PROPFIND /", b"PROXYZ", b"\r\n\r\n\r\n"]
    )
    def test_other_protocols_are_not_a_header(self, buf: bytes) -> None:
        assert maybe_proxy_header(buf) is False

    def test_answer_works_on_bytearray_and_memoryview(self) -> None:
        assert maybe_proxy_header(bytearray(b"PROXY ")) is True
        assert maybe_proxy_header(memoryview(V2_SIGNATURE)) is True


class TestParseProxyHeader:
    def test_v1_tcp4_gives_addresses_and_length(self) -> None:
        line = b"PROXY TCP4 192.0.2.1 198.51.100.7 56324 443\r\n"
        assert parse_proxy_header(line + b"\x16\x03\x01") == ProxyInfo(
            ("192.0.2.1", 56324), ("198.51.100.7", 443), 1, (), len(line)
        )

    def test_v1_tcp6_addresses_come_back_normalised(self) -> None:
        line = b"PROXY TCP6 2001:DB8:0:0::1 ::FFFF:192.0.2.1 0 65535\r\n"
        assert parse_proxy_header(line) == ProxyInfo(
            ("2001:db8::1", 0), ("::ffff:c000:201", 65535), 1, (), len(line)
        )

    @pytest.mark.parametrize("line", [b"PROXY UNKNOWN\r\n", b"PROXY UNKNOWN anything at all\r\n"])
    def test_v1_unknown_has_no_addresses(self, line: bytes) -> None:
        assert parse_proxy_header(line) == ProxyInfo(None, None, 1, (), len(line))

    def test_v1_at_the_spec_maximum_is_accepted(self) -> None:
        line = f"PROXY UNKNOWN {FULL_V6} {FULL_V6} 65535 65535\r\n".encode()
        assert len(line) == V1_MAX
        assert parse_proxy_header(line) == ProxyInfo(None, None, 1, (), V1_MAX)

    def test_v1_without_a_line_end_needs_more_until_the_maximum(self) -> None:
        line = f"PROXY UNKNOWN {FULL_V6} {FULL_V6} 65535 65535\r".encode()
        assert parse_proxy_header(line) is None
        with pytest.raises(ProtocolError) as e:
            parse_proxy_header(line + b"5")
        assert e.value.code == "HEAD_TOO_LARGE"

    @pytest.mark.parametrize(
        "line",
        [
            b"PROXY TCP4 192.0.2.1 192.0.2.2 1 2\n",
            b"PROXY TCP4 192.0.2.1 192.0.2.2 1 2 \r\n",
            b"PROXY TCP4  192.0.2.1 192.0.2.2 1 2\r\n",
            b"PROXY TCP4 192.0.2.1 192.0.2.2 1\r\n",
            b"PROXY UDP4 192.0.2.1 192.0.2.2 1 2\r\n",
            b"PROXY \r\n",
            b"PROXY tcp4 192.0.2.1 192.0.2.2 1 2\r\n",
            b"PROXY TCP4 192.0.2.1 192.0.2.\xff 1 2\r\n",
            b"PROXY TCP4 192.0.2.1 ::1 1 2\r\n",
            b"PROXY TCP6 ::1 192.0.2.1 1 2\r\n",
            b"PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n",
            b"PROXY TCP4 192.0.2.01 192.0.2.2 1 2\r\n",
            b"PROXY TCP4 192.0.2.1 192.0.2.256 1 2\r\n",
            b"PROXY TCP4 192.0.2.1 192.0.2.2 01 2\r\n",
            b"PROXY TCP4 192.0.2.1 192.0.2.2 1 65536\r\n",
            b"PROXY TCP4 192.0.2.1 192.0.2.2 -1 2\r\n",
            b"PROXY TCP4 192.0.2.1 192.0.2.2 +1 2\r\n",
            b"PROXY TCP4 192.0.2.1 192.0.2.2 1 \xd9\xa1\r\n",
            b"PROXY TCP4 192.0.2.1 192.0.2.2 1 \r\n",
        ],
    )
    def test_malformed_v1_is_a_bad_request(self, line: bytes) -> None:
        with pytest.raises(ProtocolError) as e:
            parse_proxy_header(line)
        assert e.value.code == "BAD_REQUEST"

    def test_v2_tcp4_gives_addresses_tlvs_and_length(self) -> None:
        payload = bytes([192, 0, 2, 1, 198, 51, 100, 7]) + struct.pack("!HH", 56324, 443)
        payload += b"\x02\x00\x0eweb.alice.shed" + b"\x01\x00\x02h2"
        header = v2(payload=payload)
        assert parse_proxy_header(header + b"GET") == ProxyInfo(
            ("192.0.2.1", 56324),
            ("198.51.100.7", 443),
            2,
            ((PP2Type.AUTHORITY, b"web.alice.shed"), (PP2Type.ALPN, b"h2")),
            len(header),
        )

    def test_v2_tcp6_gives_addresses(self) -> None:
        payload = bytes(15) + b"\x01" + b"\x20\x01\x0d\xb8" + bytes(11) + b"\x02"
        header = v2(family=0x21, payload=payload + struct.pack("!HH", 1, 2))
        assert parse_proxy_header(header) == ProxyInfo(
            ("::1", 1), ("2001:db8::2", 2), 2, (), len(header)
        )

    def test_v2_local_has_no_addresses_but_keeps_tlvs(self) -> None:
        header = v2(command=0, family=0x00, payload=b"\x04\x00\x00")
        assert parse_proxy_header(header) == ProxyInfo(None, None, 2, ((4, b""),), len(header))

    def test_v2_local_with_inet_family_hides_the_addresses(self) -> None:
        header = v2(command=0, payload=bytes(12))
        assert parse_proxy_header(header) == ProxyInfo(None, None, 2, (), 28)

    def test_v2_unix_family_has_no_addresses(self) -> None:
        header = v2(family=0x31, payload=b"/tmp/a".ljust(216, b"\x00") + b"\x01\x00\x01x")
        assert parse_proxy_header(header) == ProxyInfo(None, None, 2, ((1, b"x"),), len(header))

    def test_v2_unspec_transport_is_accepted(self) -> None:
        header = v2(family=0x10, payload=bytes(12))
        assert parse_proxy_header(header) == ProxyInfo(
            ("0.0.0.0", 0), ("0.0.0.0", 0), 2, (), len(header)
        )

    @pytest.mark.parametrize(
        "header",
        [
            v2(version=1),
            v2(command=2),
            v2(family=0x12, payload=bytes(12)),
            v2(family=0x41),
            v2(payload=bytes(11)),
            v2(family=0x21, payload=bytes(35)),
            v2(family=0x31, payload=bytes(215)),
            v2(payload=bytes(12) + b"\x01\x00"),
            v2(payload=bytes(12) + b"\x01\x00\x03ab"),
        ],
        ids=[
            "version-1",
            "command-2",
            "datagram",
            "family-4",
            "short-inet",
            "short-inet6",
            "short-unix",
            "short-tlv-header",
            "tlv-overruns",
        ],
    )
    def test_malformed_v2_is_a_bad_request(self, header: bytes) -> None:
        with pytest.raises(ProtocolError) as e:
            parse_proxy_header(header)
        assert e.value.code == "BAD_REQUEST"

    def test_v2_payload_over_the_bound_is_too_large_from_the_header_alone(self) -> None:
        header = V2_SIGNATURE + b"\x21\x11" + struct.pack("!H", MAX_V2_PAYLOAD + 1)
        with pytest.raises(ProtocolError) as e:
            parse_proxy_header(header)
        assert e.value.code == "HEAD_TOO_LARGE"

    def test_v2_payload_at_the_bound_is_accepted(self) -> None:
        tlv = b"\x04" + struct.pack("!H", MAX_V2_PAYLOAD - 15) + bytes(MAX_V2_PAYLOAD - 15)
        info = parse_proxy_header(v2(payload=bytes(12) + tlv))
        assert info is not None
        assert info.length == 16 + MAX_V2_PAYLOAD

    @pytest.mark.parametrize("buf", [b"GET / HTTP/1.1\r\n", b"\x16\x03\x01\x02\x00"])
    def test_bytes_that_are_not_a_proxy_header_are_rejected(self, buf: bytes) -> None:
        with pytest.raises(ProtocolError, match="not a PROXY"):
            parse_proxy_header(buf)

    @pytest.mark.parametrize(
        "header",
        [
            b"PROXY TCP4 192.0.2.1 198.51.100.7 56324 443\r\n",
            encode_v2(("2001:db8::1", 1), ("2001:db8::2", 2), [(PP2Type.AUTHORITY, b"a.b")]),
        ],
    )
    def test_every_proper_prefix_needs_more(self, header: bytes) -> None:
        assert all(parse_proxy_header(header[:n]) is None for n in range(len(header)))
        assert parse_proxy_header(bytearray(header)) == parse_proxy_header(memoryview(header))

    @LAWS
    @given(src=v4, dst=v4, sport=ports, dport=ports, tlvs=tlvs)
    def test_v2_ipv4_encode_then_parse_round_trips(
        self, src: str, dst: str, sport: int, dport: int, tlvs: list[tuple[int, bytes]]
    ) -> None:
        header = encode_v2((src, sport), (dst, dport), tlvs)
        info = ProxyInfo((src, sport), (dst, dport), 2, tuple(tlvs), len(header))
        assert parse_proxy_header(header + b"\x16") == info

    @LAWS
    @given(src=v6, dst=v6, sport=ports, dport=ports, tlvs=tlvs)
    def test_v2_ipv6_encode_then_parse_round_trips(
        self, src: str, dst: str, sport: int, dport: int, tlvs: list[tuple[int, bytes]]
    ) -> None:
        header = encode_v2((src, sport), (dst, dport), tlvs)
        info = ProxyInfo((src, sport), (dst, dport), 2, tuple(tlvs), len(header))
        assert parse_proxy_header(header) == info

    @LAWS
    @given(family=st.sampled_from([v4, v6]), data=st.data(), sport=ports, dport=ports)
    def test_v1_encode_then_parse_round_trips(
        self, family: st.SearchStrategy[str], data: st.DataObject, sport: int, dport: int
    ) -> None:
        src, dst = data.draw(family), data.draw(family)
        header = encode_v1((src, sport), (dst, dport))
        assert len(header) <= V1_MAX
        assert parse_proxy_header(header + b"GET") == ProxyInfo(
            (src, sport), (dst, dport), 1, (), len(header)
        )

    @LAWS
    @given(
        encode=st.sampled_from([encode_v1, encode_v2]),
        src=st.one_of(v4, v6),
        dst=st.one_of(v4, v6),
        data=st.data(),
    )
    def test_any_prefix_needs_more_or_gives_the_full_answer(
        self, encode: object, src: str, dst: str, data: st.DataObject
    ) -> None:
        assert callable(encode)
        header = encode((src, 1), (dst, 2))
        cut = data.draw(st.integers(0, len(header)))
        assert parse_proxy_header(header[:cut]) in (None, parse_proxy_header(header))

    @LAWS
    @given(st.one_of(st.binary(max_size=120), st.binary(max_size=120).map(b"PROXY ".__add__)))
    def test_arbitrary_bytes_parse_need_more_or_raise_protocol_error(self, buf: bytes) -> None:
        outcome(buf)

    @LAWS
    @given(st.binary(max_size=300))
    def test_arbitrary_v2_payloads_never_raise_anything_else(self, payload: bytes) -> None:
        for family in (0x00, 0x11, 0x21, 0x31):
            outcome(v2(family=family, payload=payload))


class TestEncode:
    def test_v1_line_matches_the_spec_example(self) -> None:
        assert (
            encode_v1(("192.0.2.1", 56324), ("198.51.100.7", 443))
            == b"PROXY TCP4 192.0.2.1 198.51.100.7 56324 443\r\n"
        )

    def test_mixed_families_are_sent_as_ipv4_mapped_ipv6(self) -> None:
        info = parse_proxy_header(encode_v1(("192.0.2.1", 1), ("2001:db8::1", 2)))
        assert info is not None
        assert info.src == ("::ffff:c000:201", 1)
        info = parse_proxy_header(encode_v2(("2001:db8::1", 1), ("192.0.2.1", 2)))
        assert info is not None
        assert info.dst == ("::ffff:c000:201", 2)

    def test_ipv6_scope_is_dropped(self) -> None:
        assert (
            encode_v1(("fe80::1%eth0", 1), ("fe80::2", 2)) == b"PROXY TCP6 fe80::1 fe80::2 1 2\r\n"
        )

    def test_v2_header_bytes_match_the_spec_layout(self) -> None:
        header = encode_v2(("192.0.2.1", 0x1234), ("192.0.2.2", 443), [(PP2Type.ALPN, b"h2")])
        assert header == (
            V2_SIGNATURE + b"\x21\x11\x00\x11"
            + b"\xc0\x00\x02\x01\xc0\x00\x02\x02\x12\x34\x01\xbb" + b"\x01\x00\x02h2"
        )  # fmt: skip

    @pytest.mark.parametrize(
        ("src", "dst", "tlvs"),
        [
            (("192.0.2.1", 65536), ("192.0.2.2", 1), []),
            (("192.0.2.1", 1), ("192.0.2.2", -1), []),
            (("not-an-ip", 1), ("192.0.2.2", 1), []),
            (("192.0.2.1", 1), ("192.0.2.2", 1), [(256, b"")]),
            (("192.0.2.1", 1), ("192.0.2.2", 1), [(-1, b"")]),
            (("192.0.2.1", 1), ("192.0.2.2", 1), [(4, bytes(0x10000))]),
            (("192.0.2.1", 1), ("192.0.2.2", 1), [(4, bytes(0xFFFF))]),
        ],
    )
    def test_unrepresentable_input_is_a_value_error(
        self, src: tuple[str, int], dst: tuple[str, int], tlvs: list[tuple[int, bytes]]
    ) -> None:
        with pytest.raises(ValueError):
            encode_v2(src, dst, tlvs)
        if not tlvs:
            with pytest.raises(ValueError):
                encode_v1(src, dst)
