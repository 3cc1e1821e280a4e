from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from splice.egress.addresses import NAT64, Address, allowed_by, classify, dialable

ip = ipaddress.ip_address
net = ipaddress.ip_network
v4 = st.ip_addresses(v=4)
low80 = st.integers(min_value=0, max_value=(1 << 80) - 1)


def mapped(a: ipaddress.IPv4Address) -> ipaddress.IPv6Address:
    return ipaddress.IPv6Address((0xFFFF << 32) | int(a))


def sixtofour(a: ipaddress.IPv4Address, low: int = 0) -> ipaddress.IPv6Address:
    return ipaddress.IPv6Address((0x2002 << 112) | (int(a) << 80) | low)


def nat64(a: ipaddress.IPv4Address) -> ipaddress.IPv6Address:
    return ipaddress.IPv6Address(int(NAT64.network_address) | int(a))


def teredo(server: ipaddress.IPv4Address, client: ipaddress.IPv4Address) -> ipaddress.IPv6Address:
    return ipaddress.IPv6Address(
        (0x20010000 << 96) | (int(server) << 64) | (0xFFFF << 32) | (~int(client) & 0xFFFFFFFF)
    )


class TestClassify:
    @pytest.mark.parametrize(
        ("address", "name"),
        [
            ("127.0.0.1", "loopback"),
            ("127.255.255.254", "loopback"),
            ("10.1.2.3", "private"),
            ("172.16.0.1", "private"),
            ("172.31.255.255", "private"),
            ("192.168.1.1", "private"),
            ("169.254.169.254", "link-local"),
            ("169.254.0.1", "link-local"),
            ("100.64.0.1", "cgnat"),
            ("100.127.255.255", "cgnat"),
            ("224.0.0.1", "multicast"),
            ("239.255.255.250", "multicast"),
            ("0.0.0.0", "unspecified"),
            ("0.1.2.3", "unspecified"),
            ("255.255.255.255", "broadcast"),
            ("240.0.0.1", "reserved"),
            ("192.88.99.1", "reserved"),
            ("192.0.0.170", "ietf-protocol"),
            ("192.0.2.1", "documentation"),
            ("198.51.100.1", "documentation"),
            ("203.0.113.1", "documentation"),
            ("198.18.0.1", "benchmarking"),
            ("::", "unspecified"),
            ("::1", "loopback"),
            ("fe80::1", "link-local"),
            ("fe80::1%eth0", "link-local"),
            ("fec0::1", "site-local"),
            ("fc00::1", "unique-local"),
            ("fd12:3456::1", "unique-local"),
            ("ff02::1", "multicast"),
            ("2001:db8::1", "documentation"),
            ("3fff::1", "documentation"),
            ("100::1", "reserved"),
            ("2001:2::1", "ietf-protocol"),
            ("2001:10::1", "ietf-protocol"),
            ("64:ff9b:1::a00:1", "nat64-local"),
            ("::7f00:1", "reserved"),  # IPv4-compatible, deprecated
            ("::ffff:0:7f00:1", "reserved"),  # SIIT IPv4-translated
            ("5f00::1", "reserved"),  # outside 2000::/3
            ("4000::1", "reserved"),
            ("::ffff:127.0.0.1", "loopback"),
            ("::ffff:169.254.169.254", "link-local"),
            ("2002:7f00:1::1", "loopback"),
            ("2002:a9fe:a9fe::", "link-local"),
            ("64:ff9b::7f00:1", "loopback"),
            ("64:ff9b::10.0.0.1", "private"),
            ("2001:0:4136:e378:8000:63bf:3fff:fdd2", "documentation"),  # RFC 4380's client
        ],
    )
    def test_names_the_non_public_range(self, address: str, name: str) -> None:
        assert classify(ip(address)) == name

    @pytest.mark.parametrize(
        "address",
        [
            "8.8.8.8",
            "1.1.1.1",
            "151.101.0.223",
            "100.63.255.255",
            "100.128.0.0",
            "172.15.255.255",
            "172.32.0.0",
            "169.253.255.255",
            "2606:4700::1111",
            "2a00:1450:4001::200e",
            "::ffff:8.8.8.8",
            "2002:808:808::1",
            "64:ff9b::8.8.8.8",
        ],
    )
    def test_is_none_for_public_addresses(self, address: str) -> None:
        assert classify(ip(address)) is None

    def test_reads_teredo_as_both_of_its_ipv4_addresses(self) -> None:
        public, private = ipaddress.IPv4Address("8.8.8.8"), ipaddress.IPv4Address("10.0.0.1")
        assert classify(teredo(public, public)) is None
        assert classify(teredo(public, private)) == "private"
        assert classify(teredo(private, public)) == "private"

    @given(v4)
    def test_ipv4_mapped_6to4_and_nat64_forms_classify_as_the_embedded_ipv4(
        self, a: ipaddress.IPv4Address
    ) -> None:
        assert classify(mapped(a)) == classify(a)
        assert classify(sixtofour(a)) == classify(a)
        assert classify(nat64(a)) == classify(a)

    @given(v4, low80)
    def test_6to4_ignores_the_subnet_and_interface_bits(
        self, a: ipaddress.IPv4Address, low: int
    ) -> None:
        assert classify(sixtofour(a, low)) == classify(a)

    @given(v4)
    def test_never_calls_public_what_the_stdlib_calls_not_global(
        self, a: ipaddress.IPv4Address
    ) -> None:
        if classify(a) is None:
            assert a.is_global

    @given(st.ip_addresses(v=6))
    def test_never_calls_public_plain_ipv6_the_stdlib_calls_not_global(
        self, a: ipaddress.IPv6Address
    ) -> None:
        embeds = a.ipv4_mapped or a.sixtofour or a.teredo or a in NAT64
        if classify(a) is None and not embeds:
            assert a.is_global
            assert a in net("2000::/3")


class TestDialable:
    def test_refuses_non_public_addresses_by_range_name(self) -> None:
        assert dialable(ip("127.0.0.1"), ()) == "loopback"
        assert dialable(ip("8.8.8.8"), ()) is None

    def test_allow_networks_override_the_range(self) -> None:
        allow = (net("127.0.0.0/8"), net("fd00::/8"))
        assert dialable(ip("127.0.0.1"), allow) is None
        assert dialable(ip("fd00::1"), allow) is None
        assert dialable(ip("10.0.0.1"), allow) == "private"

    def test_an_ipv4_allow_network_covers_the_ipv4_mapped_form(self) -> None:
        assert dialable(ip("::ffff:127.0.0.1"), (net("127.0.0.0/8"),)) is None

    def test_an_ipv4_allow_network_does_not_cover_translated_forms(self) -> None:
        allow = (net("127.0.0.0/8"),)
        assert dialable(ip("64:ff9b::7f00:1"), allow) == "loopback"
        assert dialable(ip("2002:7f00:1::"), allow) == "loopback"

    @given(v4)
    def test_public_addresses_need_no_allow_network(self, a: Address) -> None:
        assert (dialable(a, ()) is None) == (classify(a) is None)


class TestAllowedBy:
    def test_returns_the_first_network_holding_the_address(self) -> None:
        nets = (net("10.0.0.0/8"), net("10.1.0.0/16"))
        assert allowed_by(ip("10.1.2.3"), nets) == net("10.0.0.0/8")
        assert allowed_by(ip("11.0.0.1"), nets) is None

    def test_never_matches_across_versions(self) -> None:
        assert allowed_by(ip("::1"), (net("0.0.0.0/0"),)) is None
        assert allowed_by(ip("127.0.0.1"), (net("::/0"),)) is None
