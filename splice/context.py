"""What every connection of one server shares: config, resolvers, reactor, pool, timeouts.

Connections reach their surroundings only through this object, so a reload can
swap ``cfg`` and ``chain`` atomically: a connection keeps the route it was given.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from asyncio import AbstractEventLoop
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final, Protocol
from urllib.parse import urlsplit

from splice.accesslog import AccessLog
from splice.config import Config
from splice.io.deadlines import Deadlines
from splice.io.pipes import PipePool
from splice.io.reactor import Reactor
from splice.io.upstream_pool import UpstreamPool
from splice.metrics import Metrics
from splice.resolve.chain import ResolverChain
from splice.resolve.dns import DnsCache
from splice.routing.names import HostName, parse_host
from splice.routing.netset import NetSet
from splice.routing.policy import DeclaredPort, ShedPolicy

if TYPE_CHECKING:
    from splice.relay import Relay, Run
    from splice.store.runtime import StoreRuntime

#: how long we keep reading a client after an error page, so a RST does not eat it
LINGER_TIMEOUT: Final = 2.0
#: parsed Host names kept; when full the memo starts over (a scan of random names
#: then costs what it would without one)
HOST_MEMO: Final = 4096


class PortsSource(Protocol):
    def ports(self, shed: str) -> tuple[DeclaredPort, ...] | None: ...


class Context:
    def __init__(
        self,
        loop: AbstractEventLoop,
        cfg: Config,
        chain: ResolverChain,
        access: AccessLog | None,
        ports: PortsSource | None = None,
    ) -> None:
        self.loop = loop
        self.reactor = Reactor(loop)
        self.pool = PipePool(cfg.pipe_pool)
        #: idle keep-alive connections to VMs, for requests whose client closes
        self.upstreams = UpstreamPool(
            self.reactor, cfg.upstream_keepalive, cfg.upstream_keepalive_timeout
        )
        self.access = access
        self.conns: set[Relay] = set()
        self.metrics = Metrics()
        #: upstream connections open per shed (for max_connections per shed), only sheds
        #: with one open. A plain dict: compiled, a Counter's items go through its slots
        self.shed_active: dict[str, int] = {}
        self.draining = False
        #: names -> addresses for the egress gateway (resolved once, checked, dialled)
        self.dns = DnsCache()
        #: the record/replay store of the egress gateway, when ``[forward.store]`` is on
        self.store: StoreRuntime | None = None
        #: connections handed to the store's exchange path (asyncio streams)
        self.handed: set[asyncio.Task[None]] = set()
        self.head_deadlines: Deadlines[Any] = Deadlines(cfg.head_timeout, _head_expired)
        self.connect_deadlines: Deadlines[Any] = Deadlines(cfg.connect_timeout, _connect_expired)
        self.linger_deadlines: Deadlines[Any] = Deadlines(LINGER_TIMEOUT, _linger_expired)
        self.retire_deadlines: Deadlines[Any] = Deadlines(cfg.retire_timeout, _retire_expired)
        #: set while the server's sweep sleeps (nothing tracked): the next ``track``
        #: calls it once to restart the sweep
        self.wake: Callable[[], None] | None = None
        self.apply(cfg, chain, ports)

    def apply(self, cfg: Config, chain: ResolverChain, ports: PortsSource | None) -> None:
        """Install a (new) config; connections already routed keep their upstreams.
        What can fail (the shed-server URL's parse) comes before any change."""
        url = urlsplit(cfg.resolver.shed_server)
        shed_server = (url.hostname or "127.0.0.1", url.port or 80)
        self.cfg = cfg
        self.chain = chain
        self.ports_source = ports
        self.shed_server = shed_server
        self.shed_server_host = url.netloc
        self.allow = NetSet(cfg.allow_clients)
        self.fronts = NetSet(cfg.trusted_fronts)
        self._nets: dict[tuple[str, ...], NetSet] = {}
        self.head_deadlines.set_timeout(cfg.head_timeout)
        self.connect_deadlines.set_timeout(cfg.connect_timeout)
        self.retire_deadlines.set_timeout(cfg.retire_timeout)
        self.upstreams.per_key = cfg.upstream_keepalive
        self.upstreams.idle_timeout = cfg.upstream_keepalive_timeout
        #: Host -> its parse under this config's domains
        self._host_names: dict[bytes, HostName] = {}

    def host_name(self, host: bytes) -> HostName:
        """``parse_host`` against the configured domains, memoised: a client sends
        the same few Hosts over and over, and a parse is ~1 µs of regexes and
        decoding. A Host that does not parse is not kept; it raises every time.
        """
        name = self._host_names.get(host)
        if name is None:
            name = parse_host(host, self.cfg.domains)
            if len(self._host_names) >= HOST_MEMO:
                self._host_names.clear()
            self._host_names[host] = name
        return name

    def policy(self, shed: str) -> ShedPolicy:
        policy = self.cfg.policy(shed)
        if self.ports_source is not None:
            declared = self.ports_source.ports(shed)
            if declared is not None:
                policy = dataclasses.replace(policy, ports=policy.ports + declared)
        return policy

    def allowed(self, lc: Any) -> NetSet:
        """The clients a listener admits (its own list, else the top-level one)."""
        return self.allow if lc.allow_clients is None else self._netset(lc.allow_clients)

    def proxy_sources(self, lc: Any) -> NetSet:
        return self._netset(lc.accept_proxy)

    def _netset(self, cidrs: tuple[str, ...]) -> NetSet:
        ns = self._nets.get(cidrs)
        if ns is None:
            ns = self._nets[cidrs] = NetSet(cidrs)
        return ns

    def full(self) -> bool:
        """Over ``max_connections`` (counting the connection just accepted)."""
        limit = self.cfg.max_connections
        # connections lingering after their error page are on their way out
        return bool(limit) and len(self.conns) - len(self.linger_deadlines) > limit

    def dial_mode(self, shed: str) -> str:
        sc = self.cfg.sheds.get(shed)
        return sc.dial if sc is not None and sc.dial else self.cfg.dial

    def track(self, conn: Relay) -> None:
        self.conns.add(conn)
        self.metrics.accepted += 1
        wake = self.wake
        if wake is not None:
            self.wake = None
            wake()

    def untrack(self, conn: Relay) -> None:
        # typed, not Any: compiled, each of the attributes below is a native read, where
        # on Any it was a lookup by name (a closed connection paid ten)
        self.conns.discard(conn)
        self.head_deadlines.discard(conn)
        self.connect_deadlines.discard(conn)
        self.linger_deadlines.discard(conn)
        self.retire_deadlines.discard(conn)
        conn.settle_run()  # the last request went elsewhere and ended here
        self.metrics.closed(conn.shed, conn.outcome, conn.nup, conn.ndown)
        if self.access is not None:
            ms = (time.monotonic() - conn.t0) * 1000.0
            self.access.line(
                conn.peer, conn.host, conn.shed, conn.port, conn.nup, conn.ndown, ms, conn.outcome,
                conn.egress(),
            )  # fmt: skip

    def run_ended(self, conn: Relay, run: Run) -> None:
        """``conn`` moved on from ``run``'s target: its bytes and access line, now.

        A front that pools connections to splice (Caddy's keep-alive) sends requests
        for many sheds down one connection; each run of requests to one target is
        counted to that shed and logged on its own, so no shed's traffic is
        reported under another's name.
        """
        host, shed, port, egress = run
        up, down = conn.nup, conn.ndown
        now = time.monotonic()
        self.metrics.served(shed, up, down)
        if self.access is not None:
            ms = (now - conn.t0) * 1000.0
            self.access.line(conn.peer, host, shed, port, up, down, ms, "OK", egress)
        # what is reported is not reported again: the next line starts from here
        conn.nup = conn.ndown = 0
        conn.t0 = now

    def sweep_idle(self, now: float) -> None:
        """Close connections that moved no byte for their idle timeout."""
        self.upstreams.sweep(now)
        for conn in list(self.conns):
            timeout = conn.idle_timeout()
            if not timeout or conn.closed:
                continue
            moved = conn.activity()
            if moved != conn.last_activity:
                conn.last_activity = moved
                conn.active_at = now
            elif now - conn.active_at >= timeout:
                conn.outcome = "IDLE_TIMEOUT"
                conn.close()

    def sweep(self, now: float) -> None:
        for d in (
            self.head_deadlines,
            self.connect_deadlines,
            self.linger_deadlines,
            self.retire_deadlines,
        ):
            d.sweep(now)


def _head_expired(conn: Any) -> None:
    conn.on_head_timeout()


def _connect_expired(conn: Any) -> None:
    conn.on_connect_timeout()


def _linger_expired(conn: Any) -> None:
    conn.on_linger_timeout()


def _retire_expired(conn: Any) -> None:
    conn.on_retire_timeout()
