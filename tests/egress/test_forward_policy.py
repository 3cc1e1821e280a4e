from __future__ import annotations

import ipaddress
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from splice.egress.passwords import hash_password
from splice.egress.policy import (
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_PORTS,
    Decision,
    ForwardPolicy,
    Pattern,
    Rules,
    check_address,
    parse_forward_section,
)
from splice.errors import ConfigError, ProtocolError, RouteError
from splice.forward_conn import Refused, pick_address

#: a valid hash with scrypt's cheapest parameters, so tests need not spend 50 ms each
HASH = "scrypt$2$1$1$AAAAAAAAAAAAAAAAAAAAAA==$AAAAAAAAAAAAAAAAAAAAAA=="
PEER = "192.0.2.10"
labels = st.from_regex(r"[a-z](?:[a-z0-9-]{0,10}[a-z0-9])?", fullmatch=True)
names = st.lists(labels, min_size=1, max_size=4).map(".".join)
ports = st.integers(min_value=1, max_value=65535)


def policy(**forward: Any) -> ForwardPolicy:
    return parse_forward_section(forward)


def decide(p: ForwardPolicy, host: str, port: int = 443, user: str | None = None) -> Decision:
    return p.decide(host, port, client_ip=PEER, user=user)


def config_error(forward: dict[str, Any]) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse_forward_section(forward)
    return info.value


class TestPattern:
    @pytest.mark.parametrize(
        ("text", "name", "suffix", "port"),
        [
            ("pypi.org", "pypi.org", None, None),
            ("PyPI.org.", "pypi.org", None, None),
            ("github.com:443", "github.com", None, 443),
            ("*.debian.org", None, ".debian.org", None),
            ("*.Debian.ORG:80", None, ".debian.org", 80),
            ("*", None, "", None),
            ("*:443", None, "", 443),
            ("bücher.example", "xn--bcher-kva.example", None, None),
            ("10.0.0.5", "10.0.0.5", None, None),
            ("0x0a000005:8080", "10.0.0.5", None, 8080),
            ("[2001:DB8::1]:443", "2001:db8::1", None, 443),
        ],
    )
    def test_parses_into_canonical_parts(
        self, text: str, name: str | None, suffix: str | None, port: int | None
    ) -> None:
        assert Pattern.parse(text) == Pattern(text, name, suffix, port)

    @pytest.mark.parametrize(
        "text", ["", "*.", "*.*.org", "a*.org", "**.org", "*.10.0.0.1", "::1", "a.org:0", "a b"]
    )
    def test_refuses_anything_else(self, text: str) -> None:
        with pytest.raises(ProtocolError):
            Pattern.parse(text)

    @pytest.mark.parametrize(
        ("host", "covered"),
        [
            ("ftp.debian.org", True),
            ("a.b.debian.org", True),
            ("debian.org", False),
            ("evildebian.org", False),
            ("debian.org.evil.com", False),
            ("ftp.debian.org.evil", False),
        ],
    )
    def test_a_wildcard_covers_one_or_more_labels_but_not_the_bare_suffix(
        self, host: str, covered: bool
    ) -> None:
        assert Pattern.parse("*.debian.org").covers(host) is covered

    def test_an_exact_pattern_covers_only_that_name(self) -> None:
        p = Pattern.parse("pypi.org")
        assert p.covers("pypi.org")
        assert not p.covers("www.pypi.org")
        assert not p.covers("pypi.org.evil")


class TestDecide:
    def test_allows_any_host_on_the_default_ports_when_allow_is_empty(self) -> None:
        p = policy()
        assert decide(p, "example.com", 443) == Decision(True, None, "default")
        assert decide(p, "8.8.8.8", 80) == Decision(True, None, "default")
        assert decide(p, "example.com", 22) == Decision(False, "PORT_DENIED", "ports")

    def test_matches_allowed_names_and_refuses_the_rest(self) -> None:
        p = policy(allow=["*.debian.org", "pypi.org"])
        assert decide(p, "ftp.debian.org") == Decision(True, None, "*.debian.org")
        assert decide(p, "PyPI.org.") == Decision(True, None, "pypi.org")
        assert decide(p, "debian.org") == Decision(False, "DESTINATION_DENIED", "default")
        assert decide(p, "evildebian.org").code == "DESTINATION_DENIED"

    def test_a_pattern_with_a_port_allows_only_that_port(self) -> None:
        p = policy(allow=["github.com:443", "git.example:9418"])
        assert decide(p, "github.com", 443) == Decision(True, None, "github.com:443")
        assert decide(p, "github.com", 80) == Decision(False, "PORT_DENIED", "ports")
        assert decide(p, "git.example", 9418) == Decision(True, None, "git.example:9418")

    def test_a_pattern_without_a_port_allows_the_ports_list(self) -> None:
        p = policy(allow=["pypi.org"], ports=[443])
        assert decide(p, "pypi.org", 443).allowed
        assert decide(p, "pypi.org", 80) == Decision(False, "PORT_DENIED", "ports")

    def test_a_later_pattern_can_allow_a_port_an_earlier_one_did_not(self) -> None:
        p = policy(allow=["a.example", "a.example:8443"])
        assert decide(p, "a.example", 8443) == Decision(True, None, "a.example:8443")

    def test_deny_wins_over_allow_on_every_port(self) -> None:
        p = policy(allow=["*.example", "x.example:22"], deny=["x.example"])
        assert decide(p, "x.example") == Decision(False, "DESTINATION_DENIED", "x.example")
        assert decide(p, "x.example", 22).code == "DESTINATION_DENIED"
        assert decide(p, "y.example").allowed

    def test_a_deny_pattern_with_a_port_denies_only_that_port(self) -> None:
        p = policy(deny=["*.example:80"])
        assert decide(p, "a.example", 80) == Decision(False, "DESTINATION_DENIED", "*.example:80")
        assert decide(p, "a.example", 443).allowed

    def test_deny_applies_with_an_empty_allow_list(self) -> None:
        p = policy(deny=["*.internal", "metadata.google.internal"])
        assert decide(p, "metadata.google.internal").rule == "*.internal"
        assert decide(p, "Metadata.Google.Internal.").code == "DESTINATION_DENIED"

    def test_matches_international_names_in_either_spelling(self) -> None:
        p = policy(allow=["bücher.example"], deny=["xn--caf-dma.example"])
        assert decide(p, "xn--bcher-kva.example").allowed
        assert decide(p, "BÜCHER.example.").allowed
        assert decide(p, "café.example").code == "DESTINATION_DENIED"

    def test_matches_ip_literals_in_any_spelling_as_their_canonical_text(self) -> None:
        p = policy(allow=["10.0.0.5", "[2001:db8::1]"], deny=["127.0.0.1"])
        assert decide(p, "0x0a000005").allowed
        assert decide(p, "::ffff:10.0.0.5").allowed
        assert decide(p, "2001:DB8:0::1").allowed
        assert decide(p, "127.1") == Decision(False, "DESTINATION_DENIED", "127.0.0.1")
        assert decide(p, "[::ffff:7f00:1]").code == "DESTINATION_DENIED"

    def test_an_ip_literal_does_not_slip_past_a_list_of_names(self) -> None:
        p = policy(allow=["pypi.org"])
        assert decide(p, "151.101.0.223").code == "DESTINATION_DENIED"

    def test_refuses_a_malformed_host(self) -> None:
        with pytest.raises(ProtocolError):
            decide(policy(), "a..b")

    def test_a_port_outside_the_range_is_never_allowed(self) -> None:
        p = policy(allow=["*"])
        assert decide(p, "a.example", 0).code == "PORT_DENIED"
        assert decide(p, "a.example", 70000).code == "PORT_DENIED"

    @given(names, ports, st.lists(st.sampled_from(["*", "*:443", "{n}", "*.{p}", "{n}:{port}"])))
    def test_a_name_a_deny_pattern_matches_is_never_allowed(
        self, name: str, port: int, allow: list[str]
    ) -> None:
        parent = name.split(".", 1)[-1]
        filled = [a.format(n=name, p=parent, port=port) for a in allow]
        for deny in (name, f"{name}:{port}", "*", f"*.{parent}" if "." in name else name):
            p = policy(allow=filled, deny=[deny], ports=[port])
            assert decide(p, name, port) == Decision(False, "DESTINATION_DENIED", deny)

    @given(names, ports)
    def test_the_same_name_is_decided_the_same_in_any_case_or_with_a_trailing_dot(
        self, name: str, port: int
    ) -> None:
        p = policy(allow=["*.a.example", "b"], deny=["c.a.example"], ports=[port])
        assert decide(p, name, port) == decide(p, name.upper() + ".", port)


class TestRulesFor:
    FORWARD: dict[str, Any] = {
        "allow": ["*.example"],
        "users": {"alice": HASH, "bob": HASH},
        "policies": [
            {"clients": ["10.88.0.0/24"], "allow": ["pypi.org"]},
            {"users": ["alice"], "allow": ["github.com"], "deny": ["gist.github.com"]},
            {"clients": ["fd00::/8"], "users": ["bob"], "allow": ["bob.example"]},
        ],
    }

    def test_a_client_network_picks_its_policy(self) -> None:
        p = parse_forward_section(self.FORWARD)
        assert p.decide("pypi.org", 443, client_ip="10.88.0.7", user=None).allowed
        assert not p.decide("a.example", 443, client_ip="10.88.0.7", user=None).allowed

    def test_an_ipv4_mapped_peer_is_matched_as_its_ipv4_form(self) -> None:
        p = parse_forward_section(self.FORWARD)
        assert p.decide("pypi.org", 443, client_ip="::ffff:10.88.0.7", user=None).allowed

    def test_a_proxy_user_picks_its_policy(self) -> None:
        p = parse_forward_section(self.FORWARD)
        assert p.decide("github.com", 443, client_ip=PEER, user="alice").allowed
        refused = p.decide("gist.github.com", 443, client_ip=PEER, user="alice")
        assert refused == Decision(False, "DESTINATION_DENIED", "gist.github.com")

    def test_the_first_matching_policy_wins(self) -> None:
        p = parse_forward_section(self.FORWARD)
        assert p.decide("pypi.org", 443, client_ip="10.88.0.7", user="alice").allowed
        assert not p.decide("github.com", 443, client_ip="10.88.0.7", user="alice").allowed

    def test_a_policy_matches_by_network_or_by_user(self) -> None:
        p = parse_forward_section(self.FORWARD)
        assert p.decide("bob.example", 443, client_ip="fd00::1%eth0", user=None).allowed
        assert p.decide("bob.example", 443, client_ip=PEER, user="bob").allowed

    def test_others_get_the_top_level_lists(self) -> None:
        p = parse_forward_section(self.FORWARD)
        assert p.rules_for(PEER, None) is p.rules
        assert p.rules_for("not an address", "carol") is p.rules
        assert p.decide("a.example", 443, client_ip=PEER, user=None).allowed
        assert not p.decide("pypi.org", 443, client_ip=PEER, user=None).allowed


class TestCheckAddress:
    def test_allows_public_addresses(self) -> None:
        assert check_address(ipaddress.ip_address("8.8.8.8"), ()) == Decision(True, None, "public")
        assert check_address("2606:4700::1111", ()) == Decision(True, None, "public")

    @pytest.mark.parametrize(
        ("address", "rule"),
        [
            ("127.0.0.1", "loopback"),
            ("169.254.169.254", "link-local"),
            ("::ffff:10.0.0.1", "private"),
            ("fe80::1%eth0", "link-local"),
            ("64:ff9b::a9fe:a9fe", "link-local"),
            ("not an address", "invalid"),
        ],
    )
    def test_refuses_non_public_addresses_naming_the_range(self, address: str, rule: str) -> None:
        assert check_address(address, ()) == Decision(False, "PRIVATE_ADDRESS", rule)

    def test_names_the_allow_network_that_let_an_address_through(self) -> None:
        p = policy(allow_networks=["127.0.0.0/8"])
        assert p.check_address("127.0.0.1") == Decision(True, None, "127.0.0.0/8")
        assert p.check_address("10.0.0.1") == Decision(False, "PRIVATE_ADDRESS", "private")


class TestDeniedAddress:
    """An IP-literal deny pattern holds for every address dialled, whatever name led there."""

    FORWARD: dict[str, Any] = {
        "deny": ["127.0.0.1", "10.0.0.5:8080", "*.bad.test", "[64:ff9b::a00:6]"],
        "users": {"alice": HASH},
        "policies": [{"users": ["alice"], "deny": ["10.0.0.7"]}],
    }

    def denied(self, address: str, port: int = 443, user: str | None = None) -> str | None:
        p = parse_forward_section(self.FORWARD)
        ip = ipaddress.ip_address(address)
        d = p.denied_address(ip, port, client_ip=PEER, user=user)
        assert d is None or (not d.allowed and d.code == "DESTINATION_DENIED")
        return None if d is None else d.rule

    @pytest.mark.parametrize(
        "address", ["127.0.0.1", "::ffff:127.0.0.1", "64:ff9b::7f00:1", "64:ff9b::127.0.0.1"]
    )
    def test_an_ipv4_pattern_denies_its_address_in_any_ipv6_form_that_leads_to_it(
        self, address: str
    ) -> None:
        assert self.denied(address) == "127.0.0.1"

    def test_a_nat64_pattern_denies_the_ipv4_address_it_embeds(self) -> None:
        assert self.denied("10.0.0.6") == "[64:ff9b::a00:6]"
        assert Pattern.parse("[64:ff9b::a00:6]").address == ipaddress.IPv4Address("10.0.0.6")

    def test_other_addresses_and_other_translators_are_not_denied(self) -> None:
        for address in ("127.0.0.2", "::1", "64:ff9b:1::7f00:1", "2002:7f00:1::"):
            assert self.denied(address) is None, address

    def test_a_pattern_with_a_port_denies_only_that_port(self) -> None:
        assert self.denied("10.0.0.5", 8080) == "10.0.0.5:8080"
        assert self.denied("10.0.0.5", 443) is None

    def test_name_patterns_never_match_an_address(self) -> None:
        assert Pattern.parse("*.bad.test").address is None
        assert Pattern.parse("pypi.org").address is None

    def test_a_client_gets_its_own_deny_list_and_an_unknown_one_every_list(self) -> None:
        p = parse_forward_section(self.FORWARD)
        ip = ipaddress.ip_address("10.0.0.7")
        assert self.denied("10.0.0.7") is None
        assert self.denied("10.0.0.7", user="alice") == "10.0.0.7"
        assert self.denied("127.0.0.1", user="alice") is None  # its list replaces the top one
        unknown = p.denied_address(ip, 443, client_ip=None, user=None)
        assert unknown == Decision(False, "DESTINATION_DENIED", "10.0.0.7")


class TestPickAddress:
    """The address dialled passes both gates; no socket is opened here."""

    def pick(self, p: ForwardPolicy, host: str, addrs: tuple[str, ...], port: int = 80) -> str:
        return pick_address(p, host, port, addrs, client_ip=PEER, user=None)

    def test_a_denied_address_is_skipped_for_the_next_one(self) -> None:
        p = policy(deny=["203.0.113.9"], allow_networks=["203.0.113.0/24"])
        assert self.pick(p, "cdn.test", ("203.0.113.9", "203.0.113.10")) == "203.0.113.10"

    @pytest.mark.parametrize(
        ("hosts", "addrs"),
        [
            pytest.param({}, ("::1", "127.0.0.1"), id="resolved"),
            pytest.param({"cdn.test": "127.0.0.1"}, (), id="hosts-entry"),
            pytest.param({"cdn.test": "64:ff9b::7f00:1"}, (), id="hosts-entry-nat64"),
        ],
    )
    def test_a_name_leading_only_to_a_denied_address_is_refused_as_a_denied_name(
        self, hosts: dict[str, str], addrs: tuple[str, ...]
    ) -> None:
        p = policy(deny=["127.0.0.1"], allow_networks=["127.0.0.0/8"], hosts=hosts)
        with pytest.raises(Refused) as info:
            self.pick(p, "cdn.test", addrs)
        assert (info.value.code, info.value.rule) == ("DESTINATION_DENIED", "127.0.0.1")
        assert "rule '127.0.0.1'" in str(info.value)

    def test_a_hosts_entry_that_is_not_denied_is_dialled_as_written(self) -> None:
        p = policy(deny=["127.0.0.2"], hosts={"cdn.test": "127.0.0.1"})
        assert self.pick(p, "cdn.test", ()) == "127.0.0.1"

    def test_non_public_addresses_alone_are_still_private_address(self) -> None:
        p = policy(deny=["127.0.0.2"])
        with pytest.raises(RouteError) as info:
            self.pick(p, "cdn.test", ("127.0.0.1",))
        assert info.value.code == "PRIVATE_ADDRESS"


class TestStaticAddress:
    def test_finds_a_hosts_entry_by_any_spelling_of_its_name(self) -> None:
        p = policy(hosts={"Mirror.test": "127.0.0.1", "v6.test": "::ffff:10.0.0.1"})
        assert p.static_address("mirror.test.") == ipaddress.IPv4Address("127.0.0.1")
        assert p.static_address("v6.test") == ipaddress.IPv4Address("10.0.0.1")
        assert p.static_address("other.test") is None


class TestParseForwardSection:
    def test_reads_the_example_from_the_issue(self) -> None:
        p = parse_forward_section(
            {
                "allow": ["*.debian.org", "pypi.org", "files.pythonhosted.org", "github.com:443"],
                "deny": ["*.internal", "metadata.google.internal"],
                "ports": [80, 443],
                "allow_networks": ["10.99.0.0/16"],
                "hosts": {"mirror.test": "127.0.0.1"},
                "connect_timeout": 5,
                "users": {"alice": HASH},
                "policies": [{"clients": ["10.88.0.0/24"], "users": ["alice"], "allow": ["a.b"]}],
            }
        )
        assert [pat.text for pat in p.rules.allow][-1] == "github.com:443"
        assert p.ports == frozenset({80, 443})
        assert p.allow_networks == (ipaddress.ip_network("10.99.0.0/16"),)
        assert dict(p.hosts) == {"mirror.test": ipaddress.IPv4Address("127.0.0.1")}
        assert p.connect_timeout == 5.0
        assert dict(p.users) == {"alice": HASH}
        assert p.policies[0].users == frozenset({"alice"})
        assert p.policies[0].rules == Rules(allow=(Pattern("a.b", name="a.b"),))

    def test_has_defaults_for_an_empty_table(self) -> None:
        p = parse_forward_section({})
        assert p == ForwardPolicy()
        assert p.ports == DEFAULT_PORTS
        assert p.connect_timeout == DEFAULT_CONNECT_TIMEOUT
        assert not p.users

    def test_accepts_a_hash_made_by_hash_password(self) -> None:
        assert policy(users={"alice": hash_password("pw")}).users["alice"].startswith("scrypt$")

    @pytest.mark.parametrize(
        ("forward", "key"),
        [
            ({"bogus": 1}, "forward.bogus"),
            ({"allow": "pypi.org"}, "forward.allow"),
            ({"allow": ["a.org", "b.org", "*.*.org"]}, "forward.allow[2]"),
            ({"deny": [5]}, "forward.deny[0]"),
            ({"ports": [80, 0]}, "forward.ports[1]"),
            ({"ports": [True]}, "forward.ports[0]"),
            ({"allow_networks": ["10.0.0.1/8"]}, "forward.allow_networks[0]"),
            ({"allow_networks": [10]}, "forward.allow_networks[0]"),
            ({"hosts": ["a"]}, "forward.hosts"),
            ({"hosts": {"a.test": "nowhere"}}, "forward.hosts.a.test"),
            ({"hosts": {"a.test": 5}}, "forward.hosts.a.test"),
            ({"hosts": {"a..test": "127.0.0.1"}}, "forward.hosts.a..test"),
            ({"hosts": {"127.1": "127.0.0.1"}}, "forward.hosts.127.1"),
            ({"connect_timeout": 0}, "forward.connect_timeout"),
            ({"connect_timeout": float("inf")}, "forward.connect_timeout"),
            ({"connect_timeout": float("nan")}, "forward.connect_timeout"),
            ({"connect_timeout": True}, "forward.connect_timeout"),
            ({"connect_timeout": "5"}, "forward.connect_timeout"),
            ({"users": {"alice": "plain"}}, "forward.users.alice"),
            ({"users": {"alice": 5}}, "forward.users.alice"),
            ({"users": {"a:b": HASH}}, "forward.users.a:b"),
            ({"users": {"": HASH}}, "forward.users."),
            ({"users": {"a\nb": HASH}}, "forward.users.a\nb"),
            ({"policies": {}}, "forward.policies"),
            ({"policies": ["x"]}, "forward.policies[0]"),
            ({"policies": [{"allow": ["a.b"]}]}, "forward.policies[0]"),
            ({"policies": [{"users": ["nobody"]}]}, "forward.policies[0].users[0]"),
            ({"policies": [{"clients": ["x"]}]}, "forward.policies[0].clients[0]"),
            ({"policies": [{"clients": ["10.0.0.0/8"], "x": 1}]}, "forward.policies[0].x"),
            (
                {"policies": [{"clients": ["10.0.0.0/8"], "deny": ["a b"]}]},
                "forward.policies[0].deny[0]",
            ),
        ],
    )
    def test_names_the_bad_key(self, forward: dict[str, Any], key: str) -> None:
        assert config_error(forward).key == key

    def test_says_what_a_pattern_should_look_like(self) -> None:
        assert "*.debian.org" in config_error({"allow": ["a b"]}).problem

    def test_lists_the_known_keys_for_an_unknown_one(self) -> None:
        assert "allow_networks" in config_error({"alow": []}).problem
