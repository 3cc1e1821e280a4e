"""A TLS passthrough connection: route on the ClientHello's SNI, then splice untouched.

splice never decrypts: the VM terminates its own TLS. It reads an optional PROXY
header (only from trusted fronts), then just enough bytes for the whole
ClientHello, routes the server name through the same naming rules as HTTP Hosts
(default port: the shed's ``tls_port``, 443), dials, sends the exact bytes it
read (after a PROXY header for the VM, if configured) and splices both ways.
Every failure is a TLS alert and a close: never a hang, never a plaintext page.
"""

from __future__ import annotations

import socket
import time
from typing import TYPE_CHECKING, Final

from splice.errors import ProtocolError, SpliceError
from splice.io.flow import EOF
from splice.relay import Key, Relay
from splice.resolve.base import Endpoint
from splice.routing.names import HostName
from splice.wire.client_hello import Hello, parse_client_hello
from splice.wire.tls_alert import alert_for_code, render_alert

if TYPE_CHECKING:
    from splice.config import ListenConfig
    from splice.context import Context

# the clock as a module Final: compiled, ``time.perf_counter`` is a lookup in the
# ``time`` module's dict at every call
_clock: Final = time.perf_counter
#: bytes read per recv while the hello arrives
_READ: Final = 16 * 1024


class TlsConn(Relay):
    __slots__ = ("hello", "inbuf", "stirred")

    def __init__(
        self, ctx: Context, client: socket.socket, peer: tuple[str, int], lc: ListenConfig
    ) -> None:
        super().__init__(ctx, client, peer, lc)
        self.inbuf = bytearray()
        self.hello: Hello | None = None
        #: a client event came after the hello, while routing or dialling
        self.stirred = False
        self.start()

    def client_readable(self) -> None:
        if self.up_flow is not None:
            if self.up_flow.pump(self.cshort) == EOF:
                self.on_client_eof()
            return
        if self.hello is not None:
            # routing or dialling: bytes stay in the socket until then; upstream_ready
            # reads them, knowing this edge came
            self.stirred = True
            return
        while not self.closed:
            data = self.take(_READ)
            if data is None:
                return
            self.inbuf += data
            # bytes past the hello may wait in the socket with no edge to come:
            # unless this read proved it drained, upstream_ready must read
            self.stirred = not (self.cshort and len(data) < _READ)
            if self._parse():
                return

    def take(self, size: int, flags: int = 0) -> bytes | None:
        """Up to ``size`` bytes from the client; None when there are none yet, or when it
        closed (then this connection is closed too)."""
        try:
            data = self.client.recv(size, flags)
        except BlockingIOError:
            return None
        if not data:
            self.outcome = "CLIENT_CLOSED"
            self.close()
            return None
        return data

    def _parse(self) -> bool:
        """Take the PROXY header and the hello from ``inbuf``; True once routing began."""
        if self.need_proxy is not None and not self.take_proxy_header(self.inbuf):
            return self.closed
        t = _clock()
        hello = parse_client_hello(self.inbuf)
        if hello is None:
            return False
        self.ctx.metrics.head_parse.observe(_clock() - t)
        self.hello = hello
        self.ctx.head_deadlines.discard(self)
        self._route(hello)
        return True

    def _route(self, hello: Hello) -> None:
        if hello.server_name is None:
            if self.lc.fallback is None:
                raise ProtocolError("the ClientHello names no server (SNI)")
            name = HostName(self.lc.fallback, None, None)
        else:
            self.host = hello.server_name
            name = self.ctx.host_name(hello.server_name.encode())
        self.route_name(name)

    def routed(self, shed: str, label_port: int | None, ep: Endpoint) -> None:
        self.shed = shed
        policy = self.ctx.policy(shed)
        self.port = policy.pick_port(shed, label_port, self.ctx.cfg.default_port, tls=True)
        key: Key = (shed, self.port, ep.address, self.ctx.dial_mode(shed))
        self.open_upstream(key)

    def upstream_ready(self) -> None:
        assert self.up_flow is not None and self.hello is not None
        preamble = self.proxy_preamble(self.hello.server_name)
        self.up_flow.write(preamble + bytes(self.inbuf))
        self.inbuf.clear()
        self.dial_t = _clock()
        if self.stirred:  # else the socket had nothing past the hello: no read to EAGAIN
            self.client_readable()
        self.relay_only(self.cfd)

    def upstream_readable(self) -> None:
        if self.dial_t and self.handshake is None:
            self.ctx.metrics.first_byte.observe(_clock() - self.dial_t)
            self.dial_t = 0.0
        super().upstream_readable()
        if not self.dial_t and self.handshake is None:
            self.relay_only(self.ufd)  # the first byte is timed: blind from now on

    def on_head_timeout(self) -> None:
        if self.hello is None and not self.closed:
            self.fail(ProtocolError("the ClientHello did not arrive in time", code="HEAD_TIMEOUT"))

    def fail(self, err: SpliceError) -> None:
        """A fatal alert, then close: the client's TLS stack reports it."""
        if self.closed:
            return
        self.outcome = err.code
        self.drop_upstream()
        if err.code != "BAD_REQUEST" or self.hello is not None or self.inbuf[:1] == b"\x16":
            try:
                self.client.send(render_alert(alert_for_code(err.code)))
                self.client.shutdown(socket.SHUT_WR)
                # unread bytes at close() would turn our FIN into a RST that can
                # overtake the alert: take what the client already sent
                for _ in range(16):
                    if not self.client.recv(_READ):
                        break
            except OSError:
                pass
        self.close()
