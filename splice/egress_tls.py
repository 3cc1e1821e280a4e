"""Transparent TLS egress (``mode = "egress-tls"``): SNI names the destination.

Connections a sandbox made to port 443 are REDIRECTed here. The ClientHello's SNI
is the destination name (a hello without SNI is refused, never guessed), the port
is the original destination's. The name and every resolved address pass the
forward policy; TLS is spliced untouched (no MITM). Refusals are TLS alerts
(``access_denied``).
"""

from __future__ import annotations

import asyncio
import socket
from typing import TYPE_CHECKING

from splice.egress.authority import normalise_host
from splice.errors import ProtocolError
from splice.forward_conn import addresses_now, check_name, pick_address
from splice.io.dial import original_destination
from splice.relay import Key
from splice.tls_conn import TlsConn
from splice.wire.client_hello import Hello

if TYPE_CHECKING:
    from splice.config import ListenConfig
    from splice.context import Context
    from splice.egress.policy import ForwardPolicy


class EgressTlsConn(TlsConn):
    __slots__ = ("original",)

    def __init__(
        self, ctx: Context, client: socket.socket, peer: tuple[str, int], lc: ListenConfig
    ) -> None:
        self.original = original_destination(client)
        super().__init__(ctx, client, peer, lc)

    @classmethod
    def accept(
        cls, ctx: Context, client: socket.socket, peer: tuple[str, int], lc: ListenConfig
    ) -> EgressTlsConn:
        return cls(ctx, client, peer, lc)

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
        check_name(self.policy, host, port, self.peer[0], None)
        addrs = addresses_now(self.ctx, self.policy, host)
        if addrs is not None:
            self._dial_checked(host, port, addrs)
            return
        task = self.ctx.loop.create_task(self.ctx.dns.resolve(host))
        task.add_done_callback(lambda t: self._dns_done(t, host, port))

    def _dns_done(self, task: asyncio.Task[tuple[str, ...]], host: str, port: int) -> None:
        if self.closed:
            return

        def step() -> None:
            self._dial_checked(host, port, task.result())
            self.client_readable()

        self.guarded(step)

    def _dial_checked(self, host: str, port: int, addrs: tuple[str, ...]) -> None:
        addr = pick_address(self.policy, host, port, addrs)
        key: Key = (host, port, addr, "direct")
        self.open_upstream(key)
