"""What every relayed connection shares: the upstream dial, both flows, half-close, close.

A connection is one object driven by reactor callbacks, never a Task (a Task per
connection costs ~45 µs, reference/conn-cost). Subclasses (HTTP, TLS) read the
first bytes, pick the upstream and decide what a failure looks like; this class
moves bytes: ``up_flow`` carries client -> VM, ``down`` carries VM -> client.

A FIN on one side is passed on with ``shutdown(SHUT_WR)`` while the other
direction keeps flowing; the pair is closed when both sides have ended and
nothing is queued, or at once when either side resets.
"""

from __future__ import annotations

import select
import socket
from typing import TYPE_CHECKING

from splice.errors import BackendError, SpliceError
from splice.io.dial import connect_result, open_connection
from splice.io.flow import EOF, Flow

if TYPE_CHECKING:
    from splice.context import Context

_OUT = select.EPOLLOUT
_NOT_OUT = ~select.EPOLLOUT


class Relay:
    __slots__ = (
        "client",
        "client_done",
        "closed",
        "connecting",
        "ctx",
        "down",
        "dst",
        "host",
        "ndown",
        "nup",
        "outcome",
        "peer",
        "port",
        "shed",
        "cfd",
        "t0",
        "ufd",
        "up",
        "up_done",
        "up_flow",
    )

    def __init__(self, ctx: Context, client: socket.socket, peer: tuple[str, int]) -> None:
        self.ctx = ctx
        self.client = client
        self.cfd = client.fileno()
        self.peer = peer
        self.up: socket.socket | None = None
        self.ufd = -1
        self.up_flow: Flow | None = None
        self.down: Flow | None = None
        self.connecting = False
        self.client_done = False
        self.up_done = False
        self.closed = False
        self.t0 = ctx.loop.time()
        self.host = ""
        self.shed = ""
        self.port = 0
        self.dst = ""
        self.outcome = "OK"
        #: payload bytes each way, summed over every upstream this connection used
        self.nup = 0
        self.ndown = 0
        ctx.track(self)
        ctx.reactor.register(self.cfd, self)

    # -- events ---------------------------------------------------------------

    def on_event(self, fd: int, events: int) -> None:
        try:
            if fd == self.cfd:
                if events & _OUT and self.down is not None and self.down.blocked:
                    self.down_writable()
                if events & _NOT_OUT and not self.closed:
                    self.client_readable()
            elif fd == self.ufd:
                if self.connecting:
                    self.on_connected()
                    return
                if events & _OUT and self.up_flow is not None and self.up_flow.blocked:
                    self.up_writable()
                if events & _NOT_OUT and not self.closed:
                    self.upstream_readable()
        except SpliceError as e:
            self.fail(e)
        except OSError:
            if self.outcome == "OK":
                self.outcome = "RESET"
            self.close()

    def client_readable(self) -> None:
        raise NotImplementedError

    def upstream_readable(self) -> None:
        down = self.down
        if down is not None and down.pump() == EOF:
            self.on_upstream_eof()

    def up_writable(self) -> None:
        assert self.up_flow is not None
        if self.up_flow.on_writable():
            self.client_readable()
            self.maybe_close()

    def down_writable(self) -> None:
        assert self.down is not None
        if self.down.on_writable():
            if self.up is not None:
                self.upstream_readable()
            self.maybe_close()

    # -- upstream -------------------------------------------------------------

    def dial(self, address: str, port: int) -> None:
        """Start connecting; ``after_connect`` runs once the VM accepts."""
        self.dst = f"{address}:{port}"
        sock = open_connection(address, port)
        self.up = sock
        self.ufd = sock.fileno()
        self.connecting = True
        self.up_done = False
        self.ctx.reactor.register(self.ufd, self)
        self.ctx.connect_deadlines.add(self, self.ctx.loop.time())

    def on_connected(self) -> None:
        self.ctx.connect_deadlines.discard(self)
        assert self.up is not None
        err = connect_result(self.up)
        if err:
            raise BackendError(
                f"Nothing accepted the connection to port {self.port} of shed {self.shed!r}.",
                code="CONNECT_FAILED",
                shed=self.shed,
                port=self.port,
            )
        self.connecting = False
        pool = self.ctx.pool
        self.up_flow = Flow(self.client, self.up, pool)
        if self.down is not None:
            self.ndown += self.down.nbytes
            self.down.close()
        self.down = Flow(self.up, self.client, pool)
        self.after_connect()

    def on_connect_timeout(self) -> None:
        self.fail(
            BackendError(
                f"Port {self.port} of shed {self.shed!r} did not accept in time.",
                code="UPSTREAM_TIMEOUT",
                shed=self.shed,
                port=self.port,
            )
        )

    def after_connect(self) -> None:
        raise NotImplementedError

    def drop_upstream(self) -> None:
        """Close the upstream socket now; queued client-bound bytes stay in ``down``."""
        if self.up is None:
            return
        self.ctx.connect_deadlines.discard(self)
        self.ctx.reactor.forget(self.ufd)
        if self.up_flow is not None:
            self.nup += self.up_flow.nbytes
            self.up_flow.close()
            self.up_flow = None
        self.up.close()
        self.up = None
        self.ufd = -1
        self.connecting = False

    # -- ends -----------------------------------------------------------------

    def on_client_eof(self) -> None:
        if self.client_done:
            return
        self.client_done = True
        if self.up_flow is not None:
            self.up_flow.finish()
        elif self.up is None:
            self.close()
            return
        self.maybe_close()

    def on_upstream_eof(self) -> None:
        if self.up_done:
            return
        self.up_done = True
        assert self.down is not None
        self.down.finish()
        self.maybe_close()

    def maybe_close(self) -> None:
        if (
            self.client_done
            and self.up_done
            and not self.closed
            and (self.down is None or self.down.idle)
            and (self.up_flow is None or self.up_flow.idle)
        ):
            self.close()

    def fail(self, err: SpliceError) -> None:
        raise NotImplementedError

    def abort(self) -> None:
        if self.outcome == "OK":
            self.outcome = "INTERNAL_ERROR"
        self.close()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.drop_upstream()
        if self.down is not None:
            self.ndown += self.down.nbytes
            self.down.close()
        self.ctx.reactor.forget(self.cfd)
        self.client.close()
        self.ctx.untrack(self)
