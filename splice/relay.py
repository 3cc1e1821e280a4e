"""What every relayed connection shares: the upstream dial, both flows, half-close, close.

A connection is one object driven by reactor callbacks, never a Task (a Task per
connection costs ~45 µs, reference/conn-cost). Subclasses (HTTP, TLS) read the
first bytes, pick the upstream and decide what a failure looks like; this class
moves bytes: ``up_flow`` carries client -> VM, ``down`` carries VM -> client. Once
it is a tunnel, a ``Side`` per socket takes the plain read events (``relay_only``).

A FIN on one side is passed on with ``shutdown(SHUT_WR)`` while the other
direction keeps flowing; the pair is closed when both sides have ended and
nothing is queued, or at once when either side resets.
"""

from __future__ import annotations

import asyncio
import ipaddress
import select
import socket
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

from splice.accesslog import Egress
from splice.errors import BackendError, ProtocolError, RouteError, SpliceError
from splice.io.dial import connect_result, open_connection
from splice.io.flow import EOF, Flow
from splice.io.reactor import EDGE_ALL, NOT_OUT, OUT, Handler
from splice.resolve.base import Endpoint
from splice.routing.names import HostName
from splice.wire.connect_api import parse_connect_response, render_connect_request
from splice.wire.proxy_header import (
    PP2Type,
    encode_v1,
    encode_v2,
    maybe_proxy_header,
    parse_proxy_header,
)

if TYPE_CHECKING:
    from splice.config import ListenConfig
    from splice.context import Context

# the clocks as module Finals: compiled, ``time.perf_counter`` is a lookup in the
# ``time`` module's dict at every call
_clock: Final = time.perf_counter
_monotonic: Final = time.monotonic
#: bytes read per recv from the shed-server while its Connect API answer arrives
_HANDSHAKE_READ: Final = 16 * 1024
# (shed, port, address, dial mode): requests with the same key can share an upstream
Key = tuple[str, int, str | None, str]
# (host, shed, port, egress fields): the target a run of requests on a connection reached
Run = tuple[str, str, int, Egress | None]

_IN: Final = select.EPOLLIN
#: events after which a short read does not prove a socket drained: read to EOF
_HANGUPS: Final = select.EPOLLRDHUP | select.EPOLLHUP | select.EPOLLERR


class Relay(Handler):
    __slots__ = (
        "active_at",
        "cfd",
        "client",
        "client_done",
        "closed",
        "connecting",
        "counted",
        "cshort",
        "ctx",
        "dial_t",
        "down",
        "dst",
        "handshake",
        "host",
        "key",
        "last_activity",
        "lc",
        "ndown",
        "need_proxy",
        "nup",
        "outcome",
        "peer",
        "port",
        "prev",
        "proxied_dst",
        "shed",
        "t0",
        "ufd",
        "up",
        "up_done",
        "up_flow",
        "ushort",
    )

    def __init__(
        self, ctx: Context, client: socket.socket, peer: tuple[str, int], lc: ListenConfig
    ) -> None:
        self.ctx = ctx
        self.lc = lc
        self.key: Key | None = None
        #: the shed-server's Connect API answer while it arrives; None otherwise
        self.handshake: bytearray | None = None
        #: None: no PROXY header in use; True: one is required and not read yet;
        #: False: read, or this peer is not trusted to send one
        self.need_proxy: bool | None = None
        #: the address the client reached, as a trusted front's PROXY header says
        self.proxied_dst: tuple[str, int] | None = None
        if lc.accept_proxy:
            self.need_proxy = peer[0] in ctx.proxy_sources(lc)
        self.client = client
        self.cfd = client.fileno()
        self.peer = peer
        self.up: socket.socket | None = None
        self.ufd = -1
        self.up_flow: Flow | None = None
        self.down: Flow | None = None
        self.connecting = False
        #: the event being handled allows "short read = drained" (client, upstream side)
        self.cshort = False
        self.ushort = False
        self.client_done = False
        self.up_done = False
        self.closed = False
        #: start of the span the next access line covers (the connection's, at first)
        self.t0 = _monotonic()
        self.host = ""
        self.shed = ""
        self.port = 0
        self.dst = ""
        self.outcome = "OK"
        #: payload bytes each way not reported yet, summed over the upstreams used
        self.nup = 0
        self.ndown = 0
        #: the target of the run of requests before the one being routed; None while
        #: the requests stay on one target (``moving``, ``Context.run_ended``)
        self.prev: Run | None = None
        #: the shed whose per-shed connection count this connection holds
        self.counted: str | None = None
        #: perf_counter at dial, then at the last request sent (for first-byte latency)
        self.dial_t = 0.0
        self.last_activity = 0
        self.active_at = ctx.loop.time()
        ctx.track(self)

    # -- events ---------------------------------------------------------------

    def guarded(self, step: Callable[[], None]) -> None:
        """Run one step of this connection; its errors end this connection only."""
        try:
            step()
        except SpliceError as e:
            self.failed(e)
        except OSError:
            self.reset()

    def failed(self, err: SpliceError) -> None:
        """Answer ``err``; a client that is gone by then (reset) is just closed."""
        try:
            self.fail(err)
        except OSError:
            self.reset()

    def reset(self) -> None:
        if self.outcome == "OK":
            self.outcome = "RESET"
        self.close()

    def start(self) -> None:
        """The first read, right at accept, then the one epoll registration.

        Reading first spares a wake-up: the head is usually there already, and an
        edge-triggered registration of a readable socket would report it again only
        to have the next read say EAGAIN. Bytes that arrive in between are reported
        by the registration itself, so none is missed.
        """
        ctx = self.ctx
        if ctx.full():
            self.guarded(lambda: self.fail(SpliceError(code="TOO_MANY_CONNECTIONS")))
        else:
            ctx.head_deadlines.add(self, ctx.loop.time())
            # before the registration a short read proves the socket drained: bytes
            # that come later are reported by the registration itself
            self.cshort = True
            self.guarded(self.client_readable)
            self.cshort = False
        if not self.closed:
            ctx.reactor.register(self.cfd, self)

    def on_event(self, fd: int, events: int) -> None:
        try:
            if fd == self.cfd:
                if events & OUT and self.down is not None and not self.down.idle:
                    self.down_writable()
                if events & NOT_OUT and not self.closed:
                    self.cshort = not events & _HANGUPS
                    self.client_readable()
                    self.cshort = False
            elif fd == self.ufd:
                if self.connecting:
                    self.on_connected(events)
                    return
                if events & OUT and self.up_flow is not None and not self.up_flow.idle:
                    self.up_writable()
                if events & NOT_OUT and not self.closed:
                    self.ushort = not events & _HANGUPS
                    self.upstream_readable()
                    self.ushort = False
        except SpliceError as e:
            self.failed(e)
        except OSError:
            self.reset()

    def client_readable(self) -> None:
        raise NotImplementedError

    def upstream_readable(self) -> None:
        if self.handshake is not None:
            self._read_handshake()
            return
        down = self.down
        if down is not None and down.pump(self.ushort) == EOF:
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
        self.dial_t = _clock()
        sock = open_connection(address, port)
        self.up = sock
        self.ufd = sock.fileno()
        self.connecting = True
        self.up_done = False
        # the connect reports its end as writability. Even on loopback, where the
        # handshake is over when connect() returns, waiting for that event is cheaper
        # than going on at once: measured, new connection per request, 40 % of them
        # dialling (bench README, "Bisecting a regression")
        self.ctx.reactor.register(self.ufd, self, EDGE_ALL)
        self.ctx.connect_deadlines.add(self, self.ctx.loop.time())

    def on_connected(self, events: int) -> None:
        """The connect ended; if the VM accepted, the flows exist from now on."""
        self.ctx.connect_deadlines.discard(self)
        assert self.up is not None
        # writable without an error or hang-up is a finished connect: no getsockopt
        if events & _HANGUPS and connect_result(self.up):
            raise BackendError(
                f"Nothing accepted the connection to port {self.port} of shed {self.shed!r}.",
                code="CONNECT_FAILED",
                shed=self.shed,
                port=self.port,
            )
        self.connecting = False
        self.ctx.metrics.dial.observe(_clock() - self.dial_t)
        self.dial_t = 0.0
        self._flows(self.up)
        self.after_connect()

    def _flows(self, up: socket.socket) -> None:
        pool, arm = self.ctx.pool, self.ctx.reactor.arm
        self.up_flow = Flow(self.client, up, pool, arm)
        if self.down is not None:
            self.down.close()
            self.ndown += self.down.nbytes
        self.down = Flow(up, self.client, pool, arm)
        self.settle_run()  # the earlier upstream's bytes are all counted by now

    def settle_run(self) -> None:
        """If the requests left the previous target, that run's line and bytes, now."""
        prev = self.prev
        if prev is not None:
            self.prev = None
            if prev[:3] != (self.host, self.shed, self.port):
                self.ctx.run_ended(self, prev)

    def moving(self) -> None:
        """A request is about to be routed: remember the target its predecessors
        reached, whose run ends if this one goes elsewhere (its own access line)."""
        if self.key is not None and self.prev is None:
            self.prev = (self.host, self.shed, self.port, self.egress())

    def relay_only(self, fd: int) -> None:
        """``fd``'s events only move bytes from now on: give it a ``Side`` handler.

        Call once a direction is blind for good (a tunnel) and nothing is left to
        parse or answer on it; it is a no-op for a socket this connection no longer
        handles (closed, or a Side already).
        """
        handlers = self.ctx.reactor.handlers
        up_flow, down = self.up_flow, self.down
        if handlers.get(fd) is not self or up_flow is None or down is None:
            return
        # a Side only pumps its flow on a plain read event: the C fast path does the same
        if fd == self.cfd:
            handlers[fd] = Side(self, up_flow, down, self.on_client_eof)
            up_flow.fast_on()
        elif fd == self.ufd:
            handlers[fd] = Side(self, down, up_flow, self.on_upstream_eof)
            down.fast_on()

    def adopt(self, key: Key, sock: socket.socket) -> None:
        """Take over an idle keep-alive connection to ``key`` (already counted)."""
        self.key = key
        self.up = sock
        self.ufd = sock.fileno()
        host, port = self.ctx.shed_server if key[3] == "connect" else (key[2], key[1])
        self.dst = f"{host}:{port}"
        self.connecting = False
        self.up_done = False
        self.ctx.reactor.handlers[self.ufd] = self
        self._flows(sock)

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
        assert self.up is not None and self.key is not None
        if self.handshake is not None:
            shed, port = self.key[0], self.key[1]
            self.up.send(render_connect_request(shed, port, self.ctx.shed_server_host))
            return
        self.upstream_ready()

    def upstream_ready(self) -> None:
        """The VM end is open (TCP, or a Connect API stream): start the exchange."""
        raise NotImplementedError

    def _read_handshake(self) -> None:
        assert self.up is not None and self.handshake is not None
        data = self.up.recv(_HANDSHAKE_READ)
        self.handshake += data
        try:
            result = parse_connect_response(bytes(self.handshake), eof=not data)
        except SpliceError as e:
            e.shed, e.port = self.shed, self.port
            raise
        if result is None:
            return
        self.handshake = None
        if result[1]:
            self.early_bytes(result[1])
        self.upstream_ready()

    def early_bytes(self, data: bytes) -> None:
        """VM bytes that came in the same read as the Connect API's answer."""
        assert self.down is not None
        self.down.write(data)

    def open_upstream(self, key: Key) -> None:
        """Dial ``key``'s VM directly, or through the shed-server's Connect API."""
        self.key = key
        self._count(key[0], key[1])
        self.dial_key(key)

    def dial_key(self, key: Key) -> None:
        shed, port, address, mode = key
        if mode == "connect":
            self.handshake = bytearray()
            self.dial(*self.ctx.shed_server)
        elif address is None:
            raise BackendError(
                f"Shed {shed!r} has no network address; reach it with dial = 'connect'.",
                code="CONNECT_FAILED",
                shed=shed,
                port=port,
            )
        else:
            self.dial(address, port)

    def _count(self, shed: str, port: int) -> None:
        """Hold one of the shed's connection slots, or refuse with 503."""
        ctx = self.ctx
        sc = ctx.cfg.sheds.get(shed)
        limit = (sc.max_connections if sc is not None else 0) or ctx.cfg.max_connections_per_shed
        active = ctx.shed_active.get(shed, 0)
        if limit and active >= limit:
            raise BackendError(
                f"Shed {shed!r} is at its connection limit; try again shortly.",
                code="TOO_MANY_CONNECTIONS",
                shed=shed,
                port=port,
            )
        ctx.shed_active[shed] = active + 1
        self.counted = shed

    def activity(self) -> int:
        """Bytes moved so far, either way: unchanged between two sweeps means idle."""
        n = self.nup + self.ndown
        if self.up_flow is not None:
            n += self.up_flow.total()
        if self.down is not None:
            n += self.down.total()
        return n

    def idle_timeout(self) -> float:
        sc = self.ctx.cfg.sheds.get(self.shed) if self.shed else None
        if sc is not None and sc.idle_timeout is not None:
            return sc.idle_timeout
        return self.ctx.cfg.idle_timeout

    def drain(self) -> None:
        """The server is stopping: finish what is in flight, take nothing new."""

    def egress(self) -> Egress | None:
        """What an egress listener's access line adds (mode, user, address, rule)."""
        return None

    def proxy_version(self, shed: str) -> str | None:
        """The PROXY header version ``shed`` gets here (the shed's, else the listener's)."""
        sc = self.ctx.cfg.sheds.get(shed)
        return (sc.send_proxy if sc is not None else None) or self.lc.send_proxy

    def proxy_preamble(self, server_name: str | None) -> bytes:
        """The PROXY header for the VM, when the listener or the shed asks for one."""
        version = self.proxy_version(self.shed)
        if version is None:
            return b""
        local = self.proxied_dst or self.client.getsockname()[:2]
        src, dst = _unmap(self.peer), _unmap(local)
        if version == "v1":
            return encode_v1(src, dst)
        tlvs = [(PP2Type.AUTHORITY, server_name.encode())] if server_name else []
        return encode_v2(src, dst, tlvs)

    def take_proxy_header(self, buf: bytearray) -> bool:
        """Consume the PROXY header a trusted front puts first; False until done.

        The address it carries replaces the peer's for logs and forwarded headers.
        A header from an untrusted peer, or none where one is required, closes.
        """
        if self.need_proxy:
            try:
                info = parse_proxy_header(buf)
            except ProtocolError:
                info = None
                self.outcome = "PROXY_REQUIRED"
                self.close()
            if info is None:
                return False
            if info.src is not None:
                self.peer = info.src
            self.proxied_dst = info.dst
            del buf[: info.length]
            self.need_proxy = False
            return True
        looks = maybe_proxy_header(buf)
        if looks:
            self.outcome = "PROXY_REFUSED"
            self.close()
        return looks is False

    # -- names ----------------------------------------------------------------

    def lookup_now(self, name: HostName) -> tuple[str, int | None, Endpoint] | None:
        """Resolve without I/O (cache, static): the shed, then its NAME-PORT reading."""
        chain = self.ctx.chain
        try:
            ep = chain.cached(name.shed)
            return None if ep is None else (name.shed, name.port, ep)
        except RouteError as e:
            if e.code != "SHED_NOT_FOUND" or name.alt is None:
                raise
        shed, port = name.alt
        ep = chain.cached(shed)
        return None if ep is None else (shed, port, ep)

    async def lookup(self, name: HostName) -> tuple[str, int | None, Endpoint]:
        chain = self.ctx.chain
        try:
            return name.shed, name.port, await chain.resolve(name.shed)
        except RouteError as e:
            if e.code != "SHED_NOT_FOUND" or name.alt is None:
                raise
        shed, port = name.alt
        return shed, port, await chain.resolve(shed)

    def route_name(self, name: HostName) -> None:
        """Route to ``name``'s shed: at once on a cache hit, after a lookup on a miss."""
        found = self.lookup_now(name)
        if found is None:
            self.resolve_then(name)
        else:
            # unpacked by hand: compiled, ``routed(*found)`` is a generic call of the
            # bound method with a new tuple, this a native one
            shed, port, ep = found
            self.routed(shed, port, ep)

    def resolve_then(self, name: HostName) -> None:
        """A cache miss: the one place a connection starts a Task, and only on a miss."""
        task = self.ctx.reactor.task(self.lookup(name))
        task.add_done_callback(self._resolved)

    def _resolved(self, task: asyncio.Task[tuple[str, int | None, Endpoint]]) -> None:
        if self.closed:
            return
        if task.cancelled():  # the server is stopping: an answer, not a hang
            self.guarded(lambda: self.fail(RouteError(code="RESOLVER_UNAVAILABLE")))
            return

        def step() -> None:
            self.routed(*task.result())
            self.client_readable()

        self.guarded(step)

    def routed(self, shed: str, label_port: int | None, ep: Endpoint) -> None:
        raise NotImplementedError

    def drop_upstream(self) -> None:
        """Close the upstream socket now; queued client-bound bytes stay in ``down``."""
        fd = self.ufd
        up = self._release_upstream()
        if up is None:
            return
        self.ctx.connect_deadlines.discard(self)
        self.ctx.reactor.forget(fd)
        up.close()
        self.connecting = False
        self.handshake = None

    def park_upstream(self, drained: bool = False) -> None:
        """Give the upstream, clean after a complete exchange, to the pool (or close it);
        ``drained``: our last read of it proved nothing was left (``UpstreamPool.park``)."""
        up, key = self.up, self.key
        assert up is not None and key is not None and self.up_flow is not None
        if self.ctx.upstreams.park(key, up, self.ctx.loop.time(), drained):
            self._release_upstream()
        else:
            self.drop_upstream()

    def _release_upstream(self) -> socket.socket | None:
        """Stop counting the upstream against its shed and settle its flow; the socket,
        no longer this connection's, is the caller's to close or pool."""
        shed = self.counted
        if shed is not None:
            active = self.ctx.shed_active
            left = active[shed] - 1
            if left:
                active[shed] = left
            else:  # no entry per shed ever seen: the map holds only sheds in use
                del active[shed]
            self.counted = None
        up = self.up
        if up is None:
            return None
        if self.up_flow is not None:
            self.up_flow.close()
            self.nup += self.up_flow.nbytes
            self.up_flow = None
        if self.down is not None:  # it reads this socket: off the fast path, by fd number
            self.down.settle(off=True)
        self.up = None
        self.ufd = -1
        return up

    # -- ends -----------------------------------------------------------------

    def on_client_eof(self) -> None:
        if self.client_done:
            return
        self.client_done = True
        if self.up is None or (self.up_done and self.down is not None and self.down.idle):
            self.close()  # both sides ended: close, no final shutdown (reference/conn-cost)
            return
        if self.up_flow is not None:
            self.up_flow.finish()
        self.maybe_close()

    def on_upstream_eof(self) -> None:
        if self.up_done:
            return
        self.up_done = True
        assert self.down is not None
        if self.client_done and self.down.idle and (self.up_flow is None or self.up_flow.idle):
            self.close()
            return
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

    def detach(self) -> socket.socket:
        """Give the client socket away (to the store's exchange path): this object ends."""
        self.closed = True
        if self.down is not None:
            self.down.close()
            self.down = None
        self.drop_upstream()
        self.ctx.reactor.unregister(self.cfd)
        self.outcome = "HANDED_OVER"
        self.ctx.untrack(self)
        return self.client

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.down is not None:  # first: it reads the upstream socket
            self.down.close()
            self.ndown += self.down.nbytes
        self.drop_upstream()
        self.ctx.reactor.forget(self.cfd)
        self.client.close()
        self.ctx.untrack(self)


class Side(Handler):
    """The reactor's handler for one socket of a tunnel: a read event moves bytes.

    Once a connection only relays (a WebSocket after its 101, TLS after the
    hello, a CONNECT tunnel), each event is "read from this socket, write to the
    other". The connection's own ``on_event`` walks its state machine every time to
    find that out; this handler, put in the reactor in its place, skips the walk.
    Anything else (a hang-up or error, writability a blocked flow waits for) takes
    the connection's full path, so the semantics stay in one place.
    """

    __slots__ = ("back", "conn", "eof", "flow")

    def __init__(self, conn: Relay, flow: Flow, back: Flow, eof: Callable[[], None]) -> None:
        self.conn = conn
        #: bytes from this socket; ``back`` writes to it
        self.flow = flow
        self.back = back
        #: what the connection does when this socket sends FIN
        self.eof = eof

    def on_event(self, fd: int, events: int) -> None:
        # ``idle`` also takes in what a stopped fast-path route left: bytes dst refused
        if events & _HANGUPS or (events & OUT and not self.back.idle):
            self.conn.on_event(fd, events)
        elif events & _IN:
            try:
                # no hang-up came with this edge: a short read proves src drained
                if self.flow.pump(True) == EOF:
                    self.eof()
            except SpliceError as e:
                self.conn.failed(e)
            except OSError:
                self.conn.reset()

    def abort(self) -> None:
        self.conn.abort()


def _unmap(addr: tuple[str, int]) -> tuple[str, int]:
    """Report an IPv4-mapped IPv6 peer as the IPv4 address it is."""
    ip = ipaddress.ip_address(addr[0].split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped), addr[1]
    return str(ip), addr[1]
