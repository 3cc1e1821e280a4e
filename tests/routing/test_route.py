from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from splice.errors import ProtocolError, RouteError, SpliceError
from splice.routing.policy import OPEN_POLICY, DeclaredPort, ShedPolicy
from splice.routing.route import (
    PORT_PREFIX,
    Route,
    route_request,
    split_absolute_form,
    split_port_prefix,
)

DECLARED = ShedPolicy(ports=(DeclaredPort(3000, "app"), DeclaredPort(5173, "vite")))


class TestSplitPortPrefix:
    @pytest.mark.parametrize(
        ("target", "port", "rest"),
        [
            (b"/port/3000/x?y", 3000, b"/x?y"),
            (b"/port/3000", 3000, b"/"),
            (b"/port/3000/", 3000, b"/"),
            (b"/port/3000?q=1", 3000, b"/?q=1"),
            (b"/port/3000//x", 3000, b"//x"),
            (b"/port/1/a/port/2/b", 1, b"/a/port/2/b"),
            (b"/port/65535/x%20y?a=/port/1", 65535, b"/x%20y?a=/port/1"),
        ],
    )
    def test_strips_a_port_prefix(self, target: bytes, port: int, rest: bytes) -> None:
        assert split_port_prefix(target) == (port, rest)

    @pytest.mark.parametrize(
        "target",
        [
            b"/",
            b"/portal",
            b"/port",
            b"/port/",
            b"/port//x",
            b"/port/abc/x",
            b"/port/3000abc",
            b"/port/3000#x",
            b"/port/%33000/x",
            b"/Port/3000/x",
            b"/x/port/3000",
            b"*",
        ],
    )
    def test_leaves_other_targets_alone(self, target: bytes) -> None:
        port, rest = split_port_prefix(target)
        assert port is None
        assert rest is target

    @pytest.mark.parametrize(
        "target",
        [b"/port/0/x", b"/port/070/", b"/port/00", b"/port/70000/", b"/port/" + b"9" * 5000],
    )
    def test_rejects_digits_that_are_not_a_port(self, target: bytes) -> None:
        with pytest.raises(RouteError) as info:
            split_port_prefix(target)
        assert (info.value.code, info.value.status) == ("INVALID_PORT", 400)
        assert len(info.value.message) < 100

    @given(st.integers(1, 65535), st.binary().map(lambda b: b"/" + b))
    def test_keeps_the_rest_of_the_path_byte_identical(self, port: int, rest: bytes) -> None:
        assert split_port_prefix(PORT_PREFIX + str(port).encode() + rest) == (port, rest)


class TestSplitAbsoluteForm:
    @pytest.mark.parametrize(
        ("target", "authority", "path"),
        [
            (b"http://alpha.srv.test:8081/x?y", b"alpha.srv.test:8081", b"/x?y"),
            (b"http://h", b"h", b"/"),
            (b"http://h/", b"h", b"/"),
            (b"http://h?q=1", b"h", b"/?q=1"),
            (b"https://h/a/b", b"h", b"/a/b"),
            (b"HTTP://H/x", b"H", b"/x"),
            (b"http://[::1]:8080/x", b"[::1]:8080", b"/x"),
            (b"http://h/x@y", b"h", b"/x@y"),
        ],
    )
    def test_splits_authority_and_origin_form(
        self, target: bytes, authority: bytes, path: bytes
    ) -> None:
        assert split_absolute_form(target) == (authority, path)

    @pytest.mark.parametrize("target", [b"/", b"/x?y", b"//h/x", b"*"])
    def test_answers_none_for_origin_and_asterisk_form(self, target: bytes) -> None:
        assert split_absolute_form(target) is None

    @pytest.mark.parametrize(
        "target",
        [
            b"",
            b"x",
            b"ftp://h/",
            b"httpx://h/",
            b"http:/h",
            b"http//h",
            b"alpha.srv.test:80",
            b"http://user@h/",
            b"http://user:pw@h/",
            b"http://h@evil/",
            b"http://",
            b"http:///x",
            b"http://h#frag",
        ],
    )
    def test_rejects_other_schemes_userinfo_and_empty_hosts(self, target: bytes) -> None:
        with pytest.raises(ProtocolError) as info:
            split_absolute_form(target)
        assert (info.value.code, info.value.status) == ("BAD_REQUEST", 400)


class TestRouteRequest:
    def test_uses_the_default_port_without_label_port_or_prefix(self) -> None:
        assert route_request("a", None, b"/x", OPEN_POLICY, 8080) == Route("a", 8080, None)

    def test_uses_the_sheds_own_default_port(self) -> None:
        policy = ShedPolicy(default_port=4000)
        assert route_request("a", None, b"/x", policy, 8080) == Route("a", 4000, None)

    @pytest.mark.parametrize(
        ("target", "port", "rewritten"),
        [
            (b"/port/3000/x?y", 3000, b"/x?y"),
            (b"/port/3000", 3000, b"/"),
            (b"/port/3000?q", 3000, b"/?q"),
            (b"/port/8080/x", 8080, b"/x"),
            (b"/portal", 8080, None),
            (b"/port/abc", 8080, None),
            (b"http://a.srv.test:81/port/3000/x?y", 3000, b"http://a.srv.test:81/x?y"),
            (b"HTTPS://A.srv.test/port/3000", 3000, b"HTTPS://A.srv.test/"),
            (b"http://a.srv.test/port/3000?q", 3000, b"http://a.srv.test/?q"),
            (b"http://a.srv.test?q", 8080, None),
            (b"http://a.srv.test/x", 8080, None),
            (b"*", 8080, None),
        ],
    )
    def test_honours_and_strips_the_path_prefix_without_a_label_port(
        self, target: bytes, port: int, rewritten: bytes | None
    ) -> None:
        assert route_request("a", None, target, OPEN_POLICY, 8080) == Route("a", port, rewritten)

    @pytest.mark.parametrize("target", [b"/port/5173/x", b"/port/0/x", b"/x", b"http://h/port/1/"])
    def test_lets_a_label_port_win_and_forwards_the_target_untouched(self, target: bytes) -> None:
        assert route_request("a", 3000, target, DECLARED, 8080) == Route("a", 3000, None)

    def test_refuses_a_label_port_the_shed_does_not_expose(self) -> None:
        with pytest.raises(RouteError) as info:
            route_request("a", 9999, b"/", DECLARED, 8080)
        err = info.value
        assert (err.code, err.status, err.shed, err.port) == ("PORT_NOT_EXPOSED", 403, "a", 9999)
        assert err.ports == ((3000, "app"), (5173, "vite"))

    def test_refuses_a_path_port_the_shed_does_not_expose(self) -> None:
        with pytest.raises(RouteError) as info:
            route_request("a", None, b"/port/9999/x", DECLARED, 8080)
        assert (info.value.code, info.value.port) == ("PORT_NOT_EXPOSED", 9999)

    def test_rejects_an_invalid_path_port(self) -> None:
        with pytest.raises(RouteError) as info:
            route_request("a", None, b"/port/070/x", OPEN_POLICY, 8080)
        assert info.value.code == "INVALID_PORT"

    @pytest.mark.parametrize("target", [b"ftp://h/port/3000/", b"http://u@h/port/3000/", b"h:80"])
    def test_rejects_a_malformed_absolute_form(self, target: bytes) -> None:
        with pytest.raises(ProtocolError):
            route_request("a", None, target, OPEN_POLICY, 8080)

    @given(
        st.sampled_from([b"http://", b"https://", b"HtTp://"]),
        st.from_regex(rb"[a-z0-9.:\[\]-]{1,20}", fullmatch=True),
        st.integers(1, 65535),
        st.binary().map(lambda b: b"/" + b),
    )
    def test_rewrites_only_the_prefix_of_an_absolute_form(
        self, scheme: bytes, authority: bytes, port: int, rest: bytes
    ) -> None:
        target = scheme + authority + PORT_PREFIX + str(port).encode() + rest
        assert route_request("a", None, target, OPEN_POLICY, 80) == Route(
            "a", port, scheme + authority + rest
        )

    @given(st.binary(max_size=40), st.none() | st.integers(1, 65535))
    def test_raises_only_splice_errors_for_any_target(
        self, target: bytes, label_port: int | None
    ) -> None:
        try:
            got = route_request("a", label_port, target, DECLARED, 8080)
        except SpliceError:
            return
        assert got.port in (3000, 5173, 8080)
        assert got.target is None or got.target.startswith((b"/", b"http"))
