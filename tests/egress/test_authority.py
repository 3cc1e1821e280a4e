from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from typing import TypeVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from splice.egress.addresses import classify
from splice.egress.authority import (
    MAX_NAME,
    normalise_host,
    parse_authority,
    parse_ip_literal,
    parse_port,
    split_host_port,
)
from splice.errors import ProtocolError

T = TypeVar("T")
LOOPBACK = ipaddress.IPv4Address("127.0.0.1")
#: characters that reach every branch of the parsers quickly
HOSTISH = st.text(alphabet="0123456789abcdefxX.:[]%@-_*/ é。", max_size=40)
labels = st.from_regex(r"[a-z0-9](?:[a-z0-9-]{0,20}[a-z0-9])?", fullmatch=True)
names = (
    st.lists(labels, min_size=1, max_size=5)
    .map(".".join)
    .filter(lambda n: not re.fullmatch(r"[0-9]+|0x[0-9a-f]*", n.rsplit(".", 1)[-1]))
)


def spellings(a: ipaddress.IPv4Address) -> list[str]:
    """Every way of writing ``a`` that libc (inet_aton) or a URL parser reads as ``a``."""
    n = int(a)
    octets = [int(o) for o in str(a).split(".")]
    hi, lo = n >> 16, n & 0xFFFF
    return [
        str(a),
        str(n),
        hex(n),
        hex(n).upper().replace("X", "x"),
        "0x" + format(n, "08x").upper(),
        ".".join(f"0{o:o}" for o in octets),
        ".".join(hex(o) for o in octets),
        f"{octets[0]}.{n & 0xFFFFFF}",
        f"{octets[0]}.{octets[1]}.{lo}",
        f"{hex(octets[0])}.0{n & 0xFFFFFF:o}",
        f"{a}.",
        f"[::ffff:{a}]",
        f"[::ffff:{hi:x}:{lo:x}]",
        f"[0:0:0:0:0:FFFF:{hi:X}:{lo:X}]",
        f"::ffff:{a}",
    ]


def value_or_none(call: Callable[..., T], *args: object) -> T | None:
    """``call(*args)``, or None if it raised ProtocolError (any other exception fails)."""
    try:
        return call(*args)
    except ProtocolError:
        return None


class TestNormaliseHost:
    @pytest.mark.parametrize(
        ("host", "canonical"),
        [
            ("Example.COM", "example.com"),
            ("example.com.", "example.com"),
            ("bücher.example", "xn--bcher-kva.example"),
            ("BÜCHER.example.", "xn--bcher-kva.example"),
            ("xn--bcher-kva.example", "xn--bcher-kva.example"),
            ("XN--BCHER-KVA.EXAMPLE", "xn--bcher-kva.example"),
            ("example。com", "example.com"),
            ("faß.de", "fass.de"),
            ("a_b.example", "a_b.example"),
            ("r3---sn-x.example", "r3---sn-x.example"),
            ("1.2.3.4.example", "1.2.3.4.example"),
            ("localhost", "localhost"),
            ("a" * 63 + ".example", "a" * 63 + ".example"),
        ],
    )
    def test_writes_names_in_lower_case_ascii_without_the_trailing_dot(
        self, host: str, canonical: str
    ) -> None:
        assert normalise_host(host) == canonical

    @pytest.mark.parametrize(
        ("host", "canonical"),
        [
            ("127.1", "127.0.0.1"),
            ("0x7f.1", "127.0.0.1"),
            ("0177.0.0.1", "127.0.0.1"),
            ("2130706433", "127.0.0.1"),
            ("0x7f000001", "127.0.0.1"),
            ("0X7F000001", "127.0.0.1"),
            ("\uff11\uff12\uff17.\uff10.\uff10.\uff11", "127.0.0.1"),  # fullwidth digits
            ("127\u20240\u20240\u20241", "127.0.0.1"),  # ONE DOT LEADER: NFKC makes it "."
            ("[::1]", "::1"),
            ("::1", "::1"),
            ("[::ffff:127.0.0.1]", "127.0.0.1"),
            ("[::ffff:7f00:1]", "127.0.0.1"),
            ("[2001:DB8:0:0::1]", "2001:db8::1"),
            ("[::ffff:0.0.0.0]", "0.0.0.0"),
            ("0x", "0.0.0.0"),
            ("0", "0.0.0.0"),
            ("1.2.65535", "1.2.255.255"),
        ],
    )
    def test_writes_ip_literals_as_the_address_they_stand_for(
        self, host: str, canonical: str
    ) -> None:
        assert normalise_host(host) == canonical

    @pytest.mark.parametrize(
        "host",
        [
            "",
            ".",
            "..",
            "a..b",
            ".a",
            "a b",
            "-a.example",
            "a-.example",
            "*.example",
            "a/b",
            "a%2eb",
            "a\x00b",
            "a" * 64 + ".example",
            "xn--zz.example",
            "xn--ab-.example",
            "xn--.example",
            "x" * 2000,
            "\ud800.example",
            "ü" * 64 + ".example",
            "example.com..",
        ],
    )
    def test_refuses_malformed_names(self, host: str) -> None:
        with pytest.raises(ProtocolError) as info:
            normalise_host(host)
        assert info.value.code == "BAD_REQUEST"

    def test_refuses_a_name_over_253_characters(self) -> None:
        host = ".".join(["a" * 63] * 4)  # 255
        assert len(host) > MAX_NAME
        with pytest.raises(ProtocolError):
            normalise_host(host)
        assert normalise_host(host[:MAX_NAME]) == host[:MAX_NAME]

    @pytest.mark.parametrize(
        "host",
        [
            "1.2.3.4.5",
            "08.0.0.1",
            "1.2.3.256",
            "1.2.65536",
            "1.16777216",
            "4294967296",
            "0x100000000",
            "1..2",
            "example.0x",
            "example.123",
            "0xg.1",
            "[127.0.0.1]",
            "[::1",
            "[]",
            "[fe80::1%eth0]",
            "fe80::1%25eth0",
            "[v1.x]",
            "::1::2",
            "1:2:3:4:5:6:7:8:9",
            "[" + "0" * 50 + "::1]",
        ],
    )
    def test_refuses_numbers_that_are_not_addresses_rather_than_asking_dns(self, host: str) -> None:
        with pytest.raises(ProtocolError):
            normalise_host(host)

    @given(names)
    def test_is_idempotent_on_names(self, name: str) -> None:
        once = normalise_host(name)
        assert normalise_host(once) == once
        assert normalise_host(once.upper() + ".") == once

    @given(st.ip_addresses())
    def test_is_idempotent_on_addresses(self, ip: ipaddress.IPv4Address) -> None:
        once = normalise_host(str(ip))
        assert normalise_host(once) == once

    @settings(max_examples=500)
    @given(st.one_of(st.text(max_size=300), HOSTISH))
    def test_returns_a_canonical_host_or_raises_protocol_error_for_any_text(
        self, host: str
    ) -> None:
        result = value_or_none(normalise_host, host)
        if isinstance(result, str):
            assert normalise_host(result) == result
            assert result.isascii() and result == result.lower()


class TestParseIpLiteral:
    @pytest.mark.parametrize(
        "host",
        [
            "127.0.0.1",
            "127.1",
            "0x7f.1",
            "0177.0.0.1",
            "2130706433",
            "0x7f000001",
            "[::ffff:127.0.0.1]",
            "[::ffff:7f00:1]",
            "127.0.0.1.",
        ],
    )
    def test_reads_every_spelling_of_loopback_as_127_0_0_1(self, host: str) -> None:
        assert parse_ip_literal(host) == LOOPBACK

    def test_reads_bracketed_and_bare_ipv6(self) -> None:
        assert parse_ip_literal("[::1]") == ipaddress.IPv6Address("::1")
        assert parse_ip_literal("::1") == ipaddress.IPv6Address("::1")

    @pytest.mark.parametrize("host", ["example.com", "bücher.example", "0x7f.example", "a1"])
    def test_returns_none_for_a_name(self, host: str) -> None:
        assert parse_ip_literal(host) is None

    def test_raises_for_a_malformed_literal(self) -> None:
        with pytest.raises(ProtocolError):
            parse_ip_literal("1.2.3.4.5")

    @given(st.ip_addresses(v=4))
    def test_every_spelling_of_an_ipv4_address_is_that_address(
        self, a: ipaddress.IPv4Address
    ) -> None:
        for spelling in spellings(a):
            ip = parse_ip_literal(spelling)
            assert ip == a, spelling
            assert classify(ip) == classify(a)

    @settings(max_examples=500)
    @given(st.one_of(st.text(max_size=80), HOSTISH))
    def test_returns_an_address_none_or_raises_protocol_error_for_any_text(self, host: str) -> None:
        try:
            ip = parse_ip_literal(host)
        except ProtocolError:
            return
        if ip is not None:
            assert normalise_host(host) == str(ip)


class TestParseAuthority:
    @pytest.mark.parametrize(
        ("authority", "expected"),
        [
            (b"example.com:443", ("example.com", 443)),
            (b"Example.COM.:8080", ("example.com", 8080)),
            (b"example.com", ("example.com", 80)),
            (b"[::1]:443", ("::1", 443)),
            (b"[::1]", ("::1", 80)),
            (b"[::ffff:127.0.0.1]:22", ("127.0.0.1", 22)),
            (b"0x7f.1:80", ("127.0.0.1", 80)),
            (b"2130706433:443", ("127.0.0.1", 443)),
            ("bücher.example:443".encode(), ("xn--bcher-kva.example", 443)),
            (b"example.com:00443", ("example.com", 443)),
            (b"example.com:65535", ("example.com", 65535)),
        ],
    )
    def test_reads_host_and_port(self, authority: bytes, expected: tuple[str, int]) -> None:
        assert parse_authority(authority, 80) == expected

    @pytest.mark.parametrize(
        "authority",
        [
            b"user@example.com:443",
            b"user:pw@example.com",
            b"@example.com",
            b"",
            b":443",
            b"::1:443",
            b"[::1]x",
            b"[::1]]:443",
            b"[::1:443",
            b"\xff.example:443",
            b"example.com/path:443",
            b"[127.0.0.1]:80",
        ],
    )
    def test_refuses_userinfo_and_malformed_hosts(self, authority: bytes) -> None:
        with pytest.raises(ProtocolError) as info:
            parse_authority(authority, 80)
        assert info.value.code == "BAD_REQUEST"

    @pytest.mark.parametrize(
        "authority",
        [b"example.com:", b"example.com:0", b"example.com:65536", b"example.com:+1", b"[::1]:"],
    )
    def test_refuses_bad_ports(self, authority: bytes) -> None:
        with pytest.raises(ProtocolError) as info:
            parse_authority(authority, 80)
        assert info.value.code == "INVALID_PORT"

    def test_needs_a_port_when_there_is_no_default(self) -> None:
        assert parse_authority(b"example.com:443", None) == ("example.com", 443)
        with pytest.raises(ProtocolError) as info:
            parse_authority(b"example.com", None)
        assert info.value.code == "INVALID_PORT"

    @given(names, st.integers(min_value=1, max_value=65535))
    def test_round_trips_a_canonical_name_and_port(self, name: str, port: int) -> None:
        host = normalise_host(name)
        assert parse_authority(f"{host}:{port}".encode(), None) == (host, port)

    @settings(max_examples=500)
    @given(st.one_of(st.binary(max_size=80), HOSTISH.map(str.encode)))
    def test_returns_host_and_port_or_raises_protocol_error_for_any_bytes(
        self, authority: bytes
    ) -> None:
        result = value_or_none(parse_authority, authority, 443)
        if result is not None:
            host, port = result
            assert normalise_host(host) == host
            assert 0 < port < 65536


class TestSplitHostPort:
    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            ("a.example", ("a.example", None)),
            ("a.example:1", ("a.example", "1")),
            ("[::1]", ("[::1]", None)),
            ("[::1]:443", ("[::1]", "443")),
            ("*.a.example:443", ("*.a.example", "443")),
        ],
    )
    def test_splits_at_the_port_colon(self, text: str, expected: tuple[str, str | None]) -> None:
        assert split_host_port(text) == expected

    @pytest.mark.parametrize("text", ["::1", "a:1:2", "[::1", "[::1]443"])
    def test_refuses_bare_ipv6_and_unclosed_brackets(self, text: str) -> None:
        with pytest.raises(ProtocolError):
            split_host_port(text)


class TestParsePort:
    @pytest.mark.parametrize(("text", "port"), [("1", 1), ("443", 443), ("65535", 65535)])
    def test_reads_ports_in_range(self, text: str, port: int) -> None:
        assert parse_port(text) == port

    @pytest.mark.parametrize("text", ["", "0", "65536", "123456", "-1", " 1", "٣", "1e3"])
    def test_refuses_anything_else(self, text: str) -> None:
        with pytest.raises(ProtocolError) as info:
            parse_port(text)
        assert info.value.code == "INVALID_PORT"
