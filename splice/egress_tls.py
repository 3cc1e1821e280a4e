"""Transparent TLS egress (``mode = "egress-tls"``): SNI names the destination.

Connections a sandbox made to port 443 are REDIRECTed here. The ClientHello's SNI
is the destination name (a hello without SNI is refused, never guessed), the port
is the original destination's. The name and every resolved address pass the
forward policy; TLS is spliced untouched (no MITM). Refusals are TLS alerts
(``access_denied``).

Proxy users: a TLS client that does not know it is proxied cannot send credentials.
So with ``[forward] users`` set, every egress-tls connection is refused (an
``access_denied`` alert, PROXY_AUTH_REQUIRED in the access line) before its name is
checked or anything dialled: the rule forward and egress-http apply to a request
without credentials (407), and, as there, no per-client (``clients``) policy exempts
a peer from it. Give the transparent TLS listener a config of its own without users.

With the record/replay store on and ``intercept_tls``, the hello is only peeked at
(``MSG_PEEK``): once the name passes, the socket, the hello still unread in it, goes to
the store's path (``splice.exchange``), which terminates TLS as that name with the
splice CA and records or replays the requests inside. In ``replay`` without
interception nothing could be answered offline: the connection is refused (an
``access_denied`` alert, TUNNEL_NOT_REPLAYABLE), never dialled.
"""

from __future__ import annotations

import asyncio
import socket
from typing import TYPE_CHECKING, Final

from splice.accesslog import Egress
from splice.egress.authority import normalise_host
from splice.errors import ProtocolError, RouteError
from splice.forward_conn import address_checked_by, addresses_now, checked_by, hand_over
from splice.io.dial import original_destination
from splice.relay import Key
from splice.tls_conn import TlsConn
from splice.wire.client_hello import Hello

if TYPE_CHECKING:
    from splice.config import ListenConfig
    from splice.context import Context
    from splice.egress.policy import ForwardPolicy


#: bytes peeked at for the hello: its 16 KiB bound, its record headers, a PROXY header
_PEEK: Final = 20 * 1024


class EgressTlsConn(TlsConn):
    __slots__ = ("intercept", "original", "rule")

    def __init__(
        self, ctx: Context, client: socket.socket, peer: tuple[str, int], lc: ListenConfig
    ) -> None:
        self.original = original_destination(client)
        #: the policy rule that decided (access log)
        self.rule: str | None = None
        #: the store terminates this connection's TLS: the hello stays in the socket
        self.intercept = ctx.store is not None and ctx.store.settings.intercept_tls
        super().__init__(ctx, client, peer, lc)

    def egress(self) -> Egress:
        return (self.lc.mode, None, self.dst, self.rule)

    def client_readable(self) -> None:
        if self.intercept and self.hello is None and not self.closed:
            self._peek_hello()
        else:
            super().client_readable()

    def _peek_hello(self) -> None:
        """Look at the hello without taking it; a trusted front's PROXY header comes off
        the socket for real (the TLS server must see the hello first)."""
        data = self.take(_PEEK, socket.MSG_PEEK)
        if data is None:
            return
        self.inbuf[:] = data
        if self.need_proxy:
            if not self.take_proxy_header(self.inbuf):
                return  # incomplete (wait for more), or refused (closed)
            self.client.recv(len(data) - len(self.inbuf))
        if not self._parse() and len(data) == _PEEK and not self.closed:
            raise ProtocolError("the ClientHello is larger than splice reads")

    @property
    def policy(self) -> ForwardPolicy:
        fw = self.ctx.cfg.forward
        assert fw is not None
        return fw

    def _route(self, hello: Hello) -> None:
        if not hello.server_name:
            raise ProtocolError("the ClientHello names no server (SNI); refusing to guess")
        host = normalise_host(hello.server_name)
        port = self.original[1] if self.original is not None else 443
        self.host, self.shed, self.port = f"{host}:{port}", host, port
        if self.policy.users:
            raise RouteError(
                "Proxy authentication required: a transparent TLS client cannot send credentials.",
                code="PROXY_AUTH_REQUIRED",
                shed=host,
                port=port,
            )
        checked_by(self, host, port, None)
        store = self.ctx.store
        if self.intercept:
            hand_over(self, origin=("https", host, port))
            return
        if store is not None and store.settings.mode == "replay":
            raise RouteError(
                f"TLS to {host}:{port} cannot be replayed: it is not intercepted "
                "(set [forward.store] intercept_tls = true to record HTTPS).",
                code="TUNNEL_NOT_REPLAYABLE",
            )
        addrs = addresses_now(self.ctx, self.policy, host)
        if addrs is not None:
            self._dial_checked(host, port, addrs)
            return
        task = self.ctx.reactor.task(self.ctx.dns.resolve(host))
        task.add_done_callback(lambda t: self._dns_done(t, host, port))

    def _dns_done(self, task: asyncio.Task[tuple[str, ...]], host: str, port: int) -> None:
        if self.closed:
            return

        def step() -> None:
            self._dial_checked(host, port, task.result())
            self.client_readable()

        self.guarded(step)

    def _dial_checked(self, host: str, port: int, addrs: tuple[str, ...]) -> None:
        addr = address_checked_by(self, host, port, addrs, None)
        key: Key = (host, port, addr, "direct")
        self.open_upstream(key)
