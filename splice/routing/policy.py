"""Per-shed port policy: which ports a shed exposes and which one a request gets.

A shed that declares ports exposes only those, plus its default (and TLS) port;
a shed that declares none exposes every port. This is the security boundary the
shed design puts at the proxy, so the check lives in one pure function.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from splice.errors import RouteError

#: the TLS port a shed serves when it names none (HTTPS)
DEFAULT_TLS_PORT: Final = 443


@dataclass(frozen=True, slots=True)
class DeclaredPort:
    port: int
    label: str = ""


@dataclass(frozen=True, slots=True)
class ShedPolicy:
    """What config (and declared-port files) say about one shed."""

    default_port: int | None = None
    tls_port: int | None = None
    ports: tuple[DeclaredPort, ...] = ()

    def pick_port(
        self,
        shed: str,
        explicit: int | None,
        global_default: int,
        *,
        tls: bool = False,
    ) -> int:
        """The port to dial: the explicit one if exposed, else the (TLS) default.

        Raises:
            RouteError: PORT_NOT_EXPOSED when ``explicit`` is not declared.
        """
        default = self.default_tls_port() if tls else (self.default_port or global_default)
        if explicit is None or explicit == default:
            return default
        if not self.ports or any(d.port == explicit for d in self.ports):
            return explicit
        if explicit in (self.default_port, self.tls_port):
            return explicit
        raise RouteError(
            f"Shed {shed!r} does not expose port {explicit}.",
            code="PORT_NOT_EXPOSED",
            shed=shed,
            port=explicit,
            # port 0 is the "declares nothing reachable" marker of an unreadable file
            ports=tuple((d.port, d.label) for d in self.ports if d.port),
        )

    def default_tls_port(self) -> int:
        return self.tls_port or DEFAULT_TLS_PORT


#: the policy of a shed that config says nothing about
OPEN_POLICY: Final = ShedPolicy()
