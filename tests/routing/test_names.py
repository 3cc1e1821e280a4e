from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from splice.errors import ProtocolError, RouteError, SpliceError
from splice.routing.names import (
    MAX_NAME,
    HostName,
    canonical_label,
    is_shed_name,
    parse_host,
    parse_port,
)

DOMAINS = ("srv.test", "server-name.shed.example.io", "shed.example.io")

shed_names = st.from_regex(r"[a-z](?:[a-z0-9-]{0,61}[a-z0-9])?", fullmatch=True).filter(
    lambda s: "--" not in s
)
ports = st.integers(min_value=1, max_value=65535)


def parse(host: str) -> HostName:
    return parse_host(host.encode("latin-1"), DOMAINS)


def error_of(host: bytes) -> SpliceError:
    with pytest.raises(SpliceError) as info:
        parse_host(host, DOMAINS)
    return info.value


class TestIsShedName:
    @pytest.mark.parametrize("name", ["a", "z9", "my-shed", "web-2", "a-1", "a" * MAX_NAME])
    def test_accepts_names_in_the_shed_grammar(self, name: str) -> None:
        assert is_shed_name(name)

    @pytest.mark.parametrize(
        "name",
        ["", "1a", "-a", "a-", "a--b", "My-Shed", "a_b", "a.b", "é", "a\n", "a" * (MAX_NAME + 1)],
    )
    def test_refuses_anything_else(self, name: str) -> None:
        assert not is_shed_name(name)

    @pytest.mark.parametrize("name", ["\u212a", "\u017f", "a\u212a"])
    def test_refuses_unicode_letters_that_fold_to_ascii(self, name: str) -> None:
        assert not is_shed_name(name)


class TestParsePort:
    @pytest.mark.parametrize(("text", "port"), [("1", 1), ("80", 80), ("65535", 65535)])
    def test_reads_ports_in_range(self, text: str, port: int) -> None:
        assert parse_port(text) == port

    @pytest.mark.parametrize(
        "text", ["", "0", "00", "070", "65536", "99999", "123456", "+1", "-1", " 1", "1 ", "٣"]
    )
    def test_refuses_zero_leading_zeros_out_of_range_and_non_digits(self, text: str) -> None:
        assert parse_port(text) is None

    def test_refuses_a_huge_digit_string_without_converting_it(self) -> None:
        assert parse_port("9" * 10_000) is None

    @given(ports)
    def test_reads_back_every_port_it_formats(self, port: int) -> None:
        assert parse_port(str(port)) == port


class TestCanonicalLabel:
    def test_puts_the_port_first(self) -> None:
        assert canonical_label("my-shed", 3000) == "3000-my-shed"

    def test_is_the_bare_name_without_a_port(self) -> None:
        assert canonical_label("my-shed", None) == "my-shed"


class TestParseHostLabelForms:
    @pytest.mark.parametrize(
        ("host", "expected"),
        [
            ("my-shed.srv.test", HostName("my-shed", None, None)),
            ("a.srv.test", HostName("a", None, None)),
            ("3000-my-shed.srv.test", HostName("my-shed", 3000, None)),
            ("1-a.srv.test", HostName("a", 1, None)),
            ("65535-a.srv.test", HostName("a", 65535, None)),
            ("3000-web-2.srv.test", HostName("web-2", 3000, None)),
            ("my-shed-3000.srv.test", HostName("my-shed-3000", None, ("my-shed", 3000))),
            ("web-2.srv.test", HostName("web-2", None, ("web", 2))),
            ("a-1.srv.test", HostName("a-1", None, ("a", 1))),
            ("a-65535.srv.test", HostName("a-65535", None, ("a", 65535))),
        ],
    )
    def test_reads_name_port_name_and_name_port(self, host: str, expected: HostName) -> None:
        assert parse(host) == expected

    @pytest.mark.parametrize("label", ["web-070", "web-0", "web-65536", "web-99999999"])
    def test_offers_no_alternative_when_the_trailing_number_is_not_a_port(self, label: str) -> None:
        assert parse(f"{label}.srv.test") == HostName(label, None, None)

    @pytest.mark.parametrize("label", ["070-a", "0-a", "00-a", "65536-a", "9" * 50 + "-a"])
    def test_rejects_a_leading_number_that_is_not_a_port(self, label: str) -> None:
        err = error_of(f"{label}.srv.test".encode())
        assert isinstance(err, RouteError)
        assert err.code == "INVALID_PORT"
        assert err.status == 400

    @pytest.mark.parametrize(
        "label", ["3000", "3000-", "3000-3000-a", "3000-a--b", "3000abc", "3000-A_b"]
    )
    def test_rejects_a_port_label_without_a_valid_name(self, label: str) -> None:
        err = error_of(f"{label}.srv.test".encode())
        assert err.code == "SHED_NOT_FOUND"
        assert "not a valid shed name" in err.message

    @pytest.mark.parametrize("label", ["a--b", "-a", "a-", "a_b", "%61lpha", "a'b", ""])
    def test_rejects_labels_that_are_not_shed_names(self, label: str) -> None:
        err = error_of(f"{label}.srv.test".encode())
        assert isinstance(err, RouteError)
        assert err.code == "SHED_NOT_FOUND"
        assert "not a valid shed name" in err.message
        assert err.shed is None

    def test_accepts_a_63_character_name(self) -> None:
        name = "a" * MAX_NAME
        assert parse(f"{name}.srv.test") == HostName(name, None, None)

    @pytest.mark.parametrize("label", ["a" * 64, "1-" + "a" * 62, "a" * 5000])
    def test_rejects_a_label_over_63_characters(self, label: str) -> None:
        err = error_of(f"{label}.srv.test".encode())
        assert err.code == "SHED_NOT_FOUND"
        assert "longer than 63" in err.message
        assert len(err.message) < 150


class TestParseHostSpelling:
    @pytest.mark.parametrize(
        "host",
        [
            "3000-my-shed.srv.test",
            "3000-MY-SHED.SRV.TEST",
            "3000-My-Shed.Srv.Test",
            "3000-my-shed.srv.test.",
            "3000-my-shed.srv.test:8081",
            "3000-my-shed.srv.test.:8081",
            "3000-my-shed.srv.test:",
            "3000-MY-shed.srv.TEST.:443",
        ],
    )
    def test_ignores_case_one_trailing_dot_and_the_host_port(self, host: str) -> None:
        assert parse(host) == HostName("my-shed", 3000, None)

    def test_prefers_the_longest_base_domain(self) -> None:
        assert parse("a.server-name.shed.example.io") == HostName("a", None, None)
        assert parse("b.shed.example.io") == HostName("b", None, None)

    def test_treats_a_bare_base_domain_as_unknown_even_under_a_shorter_one(self) -> None:
        assert error_of(b"server-name.shed.example.io").code == "UNKNOWN_HOST"
        assert error_of(b"srv.test").code == "UNKNOWN_HOST"
        assert error_of(b"srv.test.:80").code == "UNKNOWN_HOST"

    def test_knows_no_host_when_no_domain_is_configured(self) -> None:
        with pytest.raises(RouteError) as info:
            parse_host(b"a.srv.test", ())
        assert info.value.code == "UNKNOWN_HOST"


class TestParseHostRefusals:
    @pytest.mark.parametrize(
        "host",
        [
            b"alpha.srv.test.evil.example",
            b"alpha.evil.example",
            b"alpha.xsrv.test",
            b"srv.test.evil",
            b"alpha.srv.test..",
            b"example.com",
            b"localhost",
            b".",
        ],
    )
    def test_refuses_hosts_outside_the_base_domains(self, host: bytes) -> None:
        err = error_of(host)
        assert isinstance(err, RouteError)
        assert (err.code, err.status) == ("UNKNOWN_HOST", 404)

    @pytest.mark.parametrize(
        "host",
        [
            b"127.0.0.1",
            b"127.0.0.1:8080",
            b"10.0.0.1.",
            b"2130706433",
            b"[::1]",
            b"[::1]:80",
            b"[fe80::1%25eth0]",
            b"[v1.fe]",
        ],
    )
    def test_refuses_ip_literals(self, host: bytes) -> None:
        err = error_of(host)
        assert err.code == "UNKNOWN_HOST"
        assert "IP addresses" in err.message

    @pytest.mark.parametrize("host", [b"a.b.srv.test", b"1.2.3.4.srv.test", b"x.3000-a.srv.test"])
    def test_refuses_multi_label_prefixes(self, host: bytes) -> None:
        err = error_of(host)
        assert isinstance(err, RouteError)
        assert err.code == "SHED_NOT_FOUND"

    @pytest.mark.parametrize(
        "host",
        [
            b"",
            b"alpha.srv.test@evil",
            b"user@alpha.srv.test",
            b"user:pw@alpha.srv.test",
            b"alpha.srv.test:80:80",
            b"alpha.srv.test:http",
            b"alpha.srv.test:123456",
            b"alpha.srv.test:-1",
            b":80",
            b"alpha.srv.test/",
            b"alpha.srv.test\\x",
            b"alpha srv.test",
            b"alpha.srv.test\r\nx: y",
            b"alpha.srv.test\x00",
            b"\xc3\xa9.srv.test",
            b"\xe2\x84\xaa.srv.test",
            b"[::1",
            b"[::1]x",
            b"[]",
            b"[::1]:http",
        ],
    )
    def test_rejects_broken_host_syntax_as_a_bad_request(self, host: bytes) -> None:
        err = error_of(host)
        assert isinstance(err, ProtocolError)
        assert (err.code, err.status) == ("BAD_REQUEST", 400)


class TestParseHostLaws:
    @given(shed_names, ports)
    def test_reads_port_name_back_as_name_and_port(self, name: str, port: int) -> None:
        label = f"{port}-{name}"
        if len(label) > MAX_NAME:
            assert error_of(f"{label}.srv.test".encode()).code == "SHED_NOT_FOUND"
        else:
            assert parse(f"{label}.srv.test") == HostName(name, port, None)

    @given(shed_names, st.none() | ports)
    def test_round_trips_the_canonical_label(self, name: str, port: int | None) -> None:
        label = canonical_label(name, port)
        if len(label) <= MAX_NAME:
            got = parse(f"{label}.server-name.shed.example.io")
            assert (got.shed, got.port) == (name, port)

    @given(shed_names)
    def test_puts_an_exact_name_first(self, name: str) -> None:
        got = parse(f"{name}.srv.test")
        assert (got.shed, got.port) == (name, None)
        if got.alt is not None:
            alt_name, alt_port = got.alt
            assert is_shed_name(alt_name)
            assert f"{alt_name}-{alt_port}" == name

    @given(st.binary(max_size=80) | st.binary(max_size=20).map(lambda b: b + b".srv.test"))
    def test_yields_a_valid_name_or_a_splice_error_for_any_bytes(self, host: bytes) -> None:
        try:
            got = parse_host(host, DOMAINS)
        except SpliceError:
            return
        assert is_shed_name(got.shed)
        assert got.port is None or 1 <= got.port <= 65535
        assert got.alt is None or (is_shed_name(got.alt[0]) and 1 <= got.alt[1] <= 65535)

    @given(
        st.text("abcdeAB019-.%@:[]_", max_size=30),
        st.sampled_from(["", "."]),
        st.sampled_from(["", ":", ":80", ":65535"]),
        st.booleans(),
    )
    def test_gives_equal_results_for_case_dot_and_port_variants(
        self, label: str, dot: str, port: str, upper: bool
    ) -> None:
        plain = f"{label}.srv.test".lower()
        variant = f"{label}.srv.test{dot}{port}"
        assert _outcome(plain) == _outcome(variant.upper() if upper else variant)


def _outcome(host: str) -> object:
    try:
        return parse(host)
    except SpliceError as err:
        return err.code
