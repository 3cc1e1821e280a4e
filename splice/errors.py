"""The exception tree, and each error's HTTP status and ``X-Shed-Error`` code.

Rules:
- Pure layers (``wire``, ``routing``, ``pages``) raise these and nothing else.
- ``OSError`` is translated into a ``BackendError`` only at the I/O edge.
- The server maps an error to a page (or a TLS alert) in exactly one place.

The codes are a public interface: programs read ``X-Shed-Error``. The shed-server's
own codes (``SHED_NOT_FOUND``, ``SHED_NOT_RUNNING``, ``CONNECT_FAILED``,
``INVALID_PORT``) keep their meaning here.
"""

from __future__ import annotations

from typing import ClassVar

#: code -> (HTTP status, one line for humans). The page and the docs use the line.
CODES: dict[str, tuple[int, str]] = {
    "BAD_REQUEST": (400, "The request could not be understood."),
    "HEAD_TIMEOUT": (408, "The request head did not arrive in time."),
    "HEAD_TOO_LARGE": (431, "The request head is too large."),
    "METHOD_NOT_ALLOWED": (405, "This method cannot be relayed to a shed."),
    "UNKNOWN_HOST": (404, "This host name is not served here."),
    "SHED_NOT_FOUND": (404, "There is no shed by that name."),
    "INVALID_PORT": (400, "That port number is not valid."),
    "PORT_NOT_EXPOSED": (403, "The shed does not expose that port."),
    "CONNECT_FAILED": (502, "Nothing answered on that port in the shed."),
    "SHED_NOT_RUNNING": (503, "The shed is not running."),
    "RESOLVER_UNAVAILABLE": (503, "The shed server could not be asked where the shed is."),
    "TOO_MANY_CONNECTIONS": (503, "Too many connections; try again shortly."),
    "UPSTREAM_TIMEOUT": (504, "The shed did not accept the connection in time."),
    "BAD_RESPONSE": (502, "The answer from the shed was not HTTP that could be passed on."),
    "INTERNAL_ERROR": (500, "splice failed to handle the request."),
    "DESTINATION_DENIED": (403, "The egress policy does not allow this destination."),
    "PORT_DENIED": (403, "The egress policy does not allow this destination port."),
    "PRIVATE_ADDRESS": (403, "The destination resolves to an address that may not be dialed."),
    "DNS_FAILED": (502, "The destination name could not be resolved."),
    "PROXY_AUTH_REQUIRED": (407, "The proxy needs a valid user name and password."),
    "REPLAY_MISS": (504, "Nothing is recorded for this request, and replay mode never dials."),
    "TUNNEL_NOT_REPLAYABLE": (403, "An uninspected CONNECT tunnel cannot be replayed."),
}


class SpliceError(Exception):
    """Base of every error splice answers for. ``code`` picks status and wording."""

    default_code: ClassVar[str] = "INTERNAL_ERROR"

    def __init__(
        self,
        message: str = "",
        *,
        code: str | None = None,
        shed: str | None = None,
        port: int | None = None,
        ports: tuple[tuple[int, str], ...] = (),
    ) -> None:
        self.code = code or self.default_code
        if self.code not in CODES:
            raise ValueError(f"unknown error code {self.code!r}")
        self.message = message or CODES[self.code][1]
        self.shed = shed
        self.port = port
        #: declared ports (port, label) to offer on a PORT_NOT_EXPOSED page
        self.ports = ports
        super().__init__(self.message)

    @property
    def status(self) -> int:
        return CODES[self.code][0]


class ProtocolError(SpliceError):
    """The client's bytes break HTTP, TLS or PROXY rules (400, 408, 431)."""

    default_code = "BAD_REQUEST"


class RouteError(SpliceError):
    """The name or port does not lead to a shed (404, 403)."""

    default_code = "SHED_NOT_FOUND"


class BackendError(SpliceError):
    """The shed exists but could not be reached (502, 503, 504)."""

    default_code = "CONNECT_FAILED"


class ConfigError(Exception):
    """A config file is wrong; the message names the key and what is wrong."""

    def __init__(self, key: str, problem: str) -> None:
        self.key = key
        self.problem = problem
        super().__init__(f"{key}: {problem}" if key else problem)
