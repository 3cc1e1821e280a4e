from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from splice.errors import RouteError
from splice.routing.policy import DEFAULT_TLS_PORT, OPEN_POLICY, DeclaredPort, ShedPolicy

DECLARED = ShedPolicy(
    default_port=4000,
    tls_port=8443,
    ports=(DeclaredPort(3000, "app"), DeclaredPort(5173)),
)


class TestPickPort:
    def test_uses_the_global_default_when_nothing_is_asked_or_configured(self) -> None:
        assert OPEN_POLICY.pick_port("a", None, 8080) == 8080

    def test_uses_the_sheds_default_over_the_global_one(self) -> None:
        assert DECLARED.pick_port("a", None, 8080) == 4000

    @given(st.integers(1, 65535))
    def test_exposes_every_port_of_a_shed_that_declares_none(self, port: int) -> None:
        assert OPEN_POLICY.pick_port("a", port, 8080) == port

    @pytest.mark.parametrize("port", [3000, 5173, 4000, 8443])
    def test_exposes_declared_default_and_tls_ports(self, port: int) -> None:
        assert DECLARED.pick_port("a", port, 8080) == port

    def test_refuses_an_undeclared_port_and_lists_the_declared_ones(self) -> None:
        with pytest.raises(RouteError) as info:
            DECLARED.pick_port("my-shed", 8080, 8080)
        err = info.value
        assert (err.code, err.status, err.shed, err.port) == (
            "PORT_NOT_EXPOSED",
            403,
            "my-shed",
            8080,
        )
        assert err.ports == ((3000, "app"), (5173, ""))

    def test_exposes_the_global_default_when_it_is_the_sheds_default(self) -> None:
        policy = ShedPolicy(ports=(DeclaredPort(3000),))
        assert policy.pick_port("a", 8080, 8080) == 8080

    def test_picks_the_tls_port_for_tls(self) -> None:
        assert DECLARED.pick_port("a", None, 8080, tls=True) == 8443
        assert OPEN_POLICY.pick_port("a", None, 8080, tls=True) == DEFAULT_TLS_PORT

    def test_keeps_the_plain_default_exposed_for_tls(self) -> None:
        assert DECLARED.pick_port("a", 4000, 8080, tls=True) == 4000

    def test_refuses_an_undeclared_port_for_tls(self) -> None:
        with pytest.raises(RouteError):
            DECLARED.pick_port("a", 443, 8080, tls=True)


class TestDefaultTlsPort:
    def test_is_443_unless_configured(self) -> None:
        assert OPEN_POLICY.default_tls_port() == 443
        assert ShedPolicy(tls_port=8443).default_tls_port() == 8443


class TestFailClosedMarker:
    def test_the_port_zero_marker_is_never_offered_as_a_link(self) -> None:
        policy = ShedPolicy(default_port=8080, ports=(DeclaredPort(0), DeclaredPort(3000, "web")))
        with pytest.raises(RouteError) as info:
            policy.pick_port("web", 9000, 8080)
        assert info.value.ports == ((3000, "web"),)

    def test_a_shed_declaring_only_the_marker_keeps_just_its_default_port(self) -> None:
        policy = ShedPolicy(default_port=8080, ports=(DeclaredPort(0),))
        assert policy.pick_port("web", None, 8080) == 8080
        with pytest.raises(RouteError) as info:
            policy.pick_port("web", 3000, 8080)
        assert info.value.ports == ()
