"""CIDR sets for allow_clients, accept_proxy and trusted_fronts."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from splice.routing.netset import NetSet

TAILNET = NetSet(["100.64.0.0/10", "fd7a:115c:a1e0::/48", "127.0.0.1/32"])


class TestMembership:
    def test_addresses_inside_either_family_are_members(self) -> None:
        assert "100.101.2.3" in TAILNET and "fd7a:115c:a1e0::9" in TAILNET
        assert "127.0.0.1" in TAILNET

    def test_addresses_outside_are_not(self) -> None:
        assert "100.128.0.1" not in TAILNET and "fd7a:115c:a1e1::1" not in TAILNET
        assert "127.0.0.2" not in TAILNET

    def test_a_v4_mapped_v6_peer_is_checked_as_its_v4_address(self) -> None:
        assert "::ffff:127.0.0.1" in TAILNET and "::ffff:10.0.0.1" not in TAILNET

    def test_a_scope_id_is_ignored(self) -> None:
        assert "fd7a:115c:a1e0::1%eth0" in TAILNET

    def test_garbage_and_non_strings_are_not_members(self) -> None:
        assert "not-an-ip" not in TAILNET and 5 not in TAILNET

    def test_an_empty_set_is_false_and_a_filled_one_true(self) -> None:
        assert not NetSet([]) and TAILNET

    @given(st.ip_addresses(v=4))
    def test_every_v4_address_is_in_the_whole_v4_space(self, ip: object) -> None:
        assert str(ip) in NetSet(["0.0.0.0/0"]) and str(ip) not in NetSet(["::/0"])
