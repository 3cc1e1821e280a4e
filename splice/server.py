"""The server: listeners, the accept policy, and the lifecycle (start, reload, drain, stop).

This is the one module that joins the layers: a listener accepts, a connection
object (``HttpConn`` or ``TlsConn``) parses, routes, resolves, dials and pumps.
Accepting follows trio's policy: errnos that concern one connection are skipped;
running out of fds or memory pauses the listener for ``ACCEPT_BACKOFF`` and logs
once per ``LOG_EVERY`` seconds, so the accept loop never dies and recovers by
itself when fds free up.
"""

from __future__ import annotations

import _socket
import asyncio
import errno
import logging
import os
import resource
import select
import socket
from collections import Counter
from collections.abc import Callable
from typing import Any, Final, TextIO

from splice.accesslog import FLUSH_EVERY, AccessLog
from splice.config import Config, ListenConfig
from splice.context import Context, PortsSource
from splice.heap import gc_snapshot
from splice.http_conn import HttpConn
from splice.io.native import NATIVE_ACCEPT, AcceptBatch
from splice.io.reactor import Handler
from splice.resolve.base import Resolver
from splice.resolve.chain import ResolverChain
from splice.resolve.static import StaticResolver
from splice.routing.netset import NetSet
from splice.tls_conn import TlsConn

log: Final = logging.getLogger("splice")

#: connections accepted per listener wake-up; the listener is level-triggered, so
#: the rest are taken on the next loop iteration, after other sockets had a turn.
#: Small on purpose: accepting 64 in a row delays the responses already waiting in the
#: same batch, and each accepted request finds fewer idle upstreams parked, so more of
#: them dial. Measured at 64 Connection: close clients (bench/README, "Accept batch"):
#: 4 gives +10 % req/s, -13 % p50 and 5 µs less sys CPU per request than 64
ACCEPT_BATCH: Final = 4
#: how long a listener rests after EMFILE/ENFILE/ENOBUFS/ENOMEM
ACCEPT_BACKOFF: Final = 0.1
#: at most one "out of fds" log line per this many seconds
LOG_EVERY: Final = 10.0
#: deadline checks run this often while a connection is open; timeouts are accurate
#: to about this much. With none open the sweep sleeps (``Server._sweep``)
SWEEP_EVERY: Final = 0.05
#: idle connections are looked for this often
IDLE_SWEEP_EVERY: Final = 1.0
#: kernel queue of not-yet-accepted connections (capped by net.core.somaxconn)
BACKLOG: Final = 4096
_RESOURCE_ERRNOS: Final = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
_STREAM: Final = socket.SOCK_STREAM
_STREAM_NONBLOCK: Final = socket.SOCK_STREAM | socket.SOCK_NONBLOCK


def raise_fd_limit() -> int:
    """Raise RLIMIT_NOFILE to the hard limit; return the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return soft


def build_chain(cfg: Config) -> ResolverChain:
    """Resolvers in ``[resolver] chain`` order, behind the cache."""
    rc = cfg.resolver
    resolvers: list[Resolver] = []
    for kind in rc.chain:
        if kind == "static":
            addrs = {n: s.address for n, s in cfg.sheds.items() if s.address is not None}
            resolvers.append(StaticResolver(addrs))
        elif kind == "shed-api":
            from splice.resolve.shed_api import ShedApiResolver

            resolvers.append(ShedApiResolver(rc.shed_server, timeout=rc.timeout))
        else:
            from splice.resolve.metadata import MetadataResolver

            resolvers.append(MetadataResolver(rc.instances_dir))
    return ResolverChain(
        resolvers,
        ttl=rc.ttl,
        negative_ttl=rc.negative_ttl,
        stale=rc.stale,
        maxsize=rc.cache_size,
    )


def build_ports(cfg: Config) -> PortsSource | None:
    """Declared-port files (``[resolver] ports_dir``), re-read when they change."""
    if cfg.resolver.ports_dir is None:
        return None
    from splice.resolve.declared_ports import DeclaredPorts

    return DeclaredPorts(cfg.resolver.ports_dir)


class Listener(Handler):
    """A listening socket in the shared epoll, level-triggered."""

    def __init__(self, ctx: Context, lc: ListenConfig, factory: Callable[..., Any]) -> None:
        self.ctx = ctx
        self.config = lc
        self.factory = factory
        self.family = socket.AF_INET6 if ":" in lc.host else socket.AF_INET
        sock = socket.socket(self.family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if ctx.cfg.workers > 1:  # each worker's own socket gets a share of the connections
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        # accepted sockets inherit TCP_NODELAY: set once here, not per connection
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((lc.host, lc.port))
        sock.listen(BACKLOG)
        sock.setblocking(False)
        self.sock = sock
        self.address: tuple[str, int] = sock.getsockname()[:2]
        self._last_log = -LOG_EVERY
        self.paused = False
        ctx.reactor.register(sock.fileno(), self, select.EPOLLIN)

    def on_event(self, fd: int, events: int) -> None:
        allow = self.ctx.allowed(self.config)
        if NATIVE_ACCEPT is not None:
            self._accept_native(NATIVE_ACCEPT, fd, allow)
            return
        accept = self.sock._accept  # type: ignore[attr-defined]
        for _ in range(ACCEPT_BATCH):
            try:
                cfd, addr = accept()
            except BlockingIOError:
                return
            except OSError as e:
                if e.errno in _RESOURCE_ERRNOS:
                    self._back_off(e)
                    return
                continue  # ECONNABORTED, EPROTO, EPERM...: that client's problem only
            self._open(cfd, addr[:2], _STREAM, allow)

    def _accept_native(self, accept: AcceptBatch, fd: int, allow: NetSet) -> None:
        """``on_event`` on the compiled build: batches from the C accept, whose sockets
        are non-blocking already, and which never calls accept once more to find the
        queue empty (``splice/io/_copy.c`` says why)."""
        most = ACCEPT_BATCH
        while most > 0:
            got, err = accept(fd, most)
            for cfd, peer in got:
                self._open(cfd, peer, _STREAM_NONBLOCK, allow)
            if not err:
                return
            if err in _RESOURCE_ERRNOS:
                self._back_off(OSError(err, os.strerror(err)))
                return
            most -= len(got) + 1  # skipped: that client's problem only, as above

    def _open(self, cfd: int, peer: tuple[str, int], kind: int, allow: NetSet) -> None:
        """Start the connection on accepted socket ``cfd``; ``kind`` is SOCK_STREAM, with
        SOCK_NONBLOCK when the socket is non-blocking already."""
        ctx = self.ctx
        if allow and peer[0] not in allow:
            os.close(cfd)  # denied: closed before a byte is read, no banner
            ctx.metrics.denied += 1
            return
        # the C socket type: the Python wrapper's __init__ and close add frames, no use.
        # With SOCK_NONBLOCK in its type it takes the socket as non-blocking, no ioctl
        client = _socket.socket(self.family, kind, 0, cfd)
        if kind == _STREAM:
            client.setblocking(False)
        try:
            self.factory(ctx, client, peer, self.config)
        except Exception:
            # a bug in one connection's set-up must not cost the rest of the batch
            log.exception("setting up the connection from %s failed", peer[0])
            for conn in [c for c in ctx.conns if c.cfd == cfd]:
                conn.close()  # it may have been tracked before it failed
            client.close()

    def _back_off(self, e: OSError) -> None:
        now = self.ctx.loop.time()
        if now - self._last_log >= LOG_EVERY:
            self._last_log = now
            log.warning("accept on %s:%d failed (%s); pausing", *self.address, e.strerror)
        self.ctx.reactor.unregister(self.sock.fileno())
        self.paused = True
        self.ctx.loop.call_later(ACCEPT_BACKOFF, self._resume)

    def _resume(self) -> None:
        if self.paused and self.sock.fileno() >= 0:
            self.paused = False
            self.ctx.reactor.register(self.sock.fileno(), self, select.EPOLLIN)

    def abort(self) -> None:
        pass

    def close(self) -> None:
        self.paused = False
        if self.sock.fileno() >= 0:
            self.ctx.reactor.unregister(self.sock.fileno())
            self.sock.close()


# Each listener mode's connection class, called by a module function rather than used
# as the factory itself: compiled, a function's call of the class is a direct call of
# its native constructor, where calling the class object goes through type.__call__
# and the __init__ wrapper's argument parsing (bench README, "Native calls on the
# connection's path"). The egress modes keep the class: not the path measured here.
def _http(ctx: Context, client: socket.socket, peer: tuple[str, int], lc: ListenConfig) -> Any:
    return HttpConn(ctx, client, peer, lc)


def _tls(ctx: Context, client: socket.socket, peer: tuple[str, int], lc: ListenConfig) -> Any:
    return TlsConn(ctx, client, peer, lc)


def _factory(mode: str) -> Callable[..., Any]:
    if mode == "http":
        return _http
    if mode in ("forward", "egress-http"):
        from splice.forward_conn import ForwardConn

        return ForwardConn
    if mode == "egress-tls":
        from splice.egress_tls import EgressTlsConn

        return EgressTlsConn
    return _tls


class Server:
    def __init__(self, cfg: Config, *, access_stream: TextIO | None = None) -> None:
        self.cfg = cfg
        self.access_stream = access_stream
        self.listeners: list[Listener] = []
        self.ctx: Context | None = None
        self._tick: asyncio.TimerHandle | None = None
        #: resolver counts of chains replaced by reloads, so the totals never go back
        self._resolved: Counter[str] = Counter()

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        raise_fd_limit()
        cfg = self.cfg
        access = AccessLog(self.access_stream, cfg.log_format) if cfg.access_log else None
        self.ctx = Context(loop, cfg, build_chain(cfg), access, build_ports(cfg))
        if cfg.store.enabled:
            from splice.store.runtime import StoreRuntime

            self.ctx.store = StoreRuntime.open(cfg.store, trust_bundle=cfg.trust_bundle)
        try:
            for lc in cfg.listen:
                self.listeners.append(Listener(self.ctx, lc, _factory(lc.mode)))
        except OSError:
            for listener in self.listeners:
                listener.close()
            raise
        self._next_flush = loop.time() + FLUSH_EVERY
        self._next_idle = loop.time() + IDLE_SWEEP_EVERY
        self._tick = loop.call_later(SWEEP_EVERY, self._sweep)

    def snapshot(self) -> dict[str, Any]:
        """``Metrics.snapshot`` with the active count and the resolver totals."""
        ctx = self.ctx
        assert ctx is not None
        c, r = ctx.chain, self._resolved
        res = {"hits": c.hits, "misses": c.misses, "stale": c.stale}
        snap = ctx.metrics.snapshot(len(ctx.conns), {k: v + r[k] for k, v in res.items()})
        snap["upstream_pool"] = ctx.upstreams.stats()
        snap["gc"] = gc_snapshot()
        return snap

    @property
    def addresses(self) -> list[tuple[str, int]]:
        return [listener.address for listener in self.listeners]

    def _sweep(self) -> None:
        ctx = self.ctx
        assert ctx is not None
        now = ctx.loop.time()
        ctx.sweep(now)
        if now >= self._next_idle:
            ctx.sweep_idle(now)
            self._next_idle = now + IDLE_SWEEP_EVERY
        if ctx.conns or ctx.handed:
            if ctx.access is not None and now >= self._next_flush:
                ctx.access.flush()
                self._next_flush = now + FLUSH_EVERY
            self._tick = ctx.loop.call_later(SWEEP_EVERY, self._sweep)
            return
        # Quiet: no connection, so no deadline (each belongs to a tracked connection).
        # Log what is pending and sleep until the next connection (``Context.track``
        # calls ``_wake``), or until the idle sweep if VM connections are parked: an
        # idle process does not wake 20 times a second beside the VMs of its host
        if ctx.access is not None:
            ctx.access.flush()
        ctx.wake = self._wake
        parked = len(ctx.upstreams) > 0
        self._tick = ctx.loop.call_at(self._next_idle, self._sweep) if parked else None

    def _wake(self) -> None:
        """The first connection after a quiet spell: deadlines are checked again."""
        ctx = self.ctx
        assert ctx is not None
        if self._tick is not None:
            self._tick.cancel()
        self._tick = ctx.loop.call_later(SWEEP_EVERY, self._sweep)

    def close_listeners(self) -> None:
        for listener in self.listeners:
            listener.close()
        self.listeners.clear()

    def reload(self, cfg: Config) -> None:
        """Swap config, resolvers and listeners atomically; open connections keep their routes.

        Raises:
            OSError: a new listener could not bind; nothing has changed then (nor on any
                other error: the listeners bound for it are closed again).
        """
        ctx = self.ctx
        assert ctx is not None
        keep = {(lc.host, lc.port, lc.mode): lc for lc in cfg.listen}
        old = {(li.config.host, li.config.port, li.config.mode): li for li in self.listeners}
        chain, ports = build_chain(cfg), build_ports(cfg)
        added: list[Listener] = []
        old_chain = ctx.chain
        try:
            for k, lc in keep.items():
                if k not in old:
                    added.append(Listener(ctx, lc, _factory(lc.mode)))
            ctx.apply(cfg, chain, ports)
        except BaseException:
            for listener in added:
                listener.close()
            ctx.loop.create_task(chain.close())
            raise
        self._resolved.update(hits=old_chain.hits, misses=old_chain.misses, stale=old_chain.stale)
        self.cfg = cfg
        for k, listener in old.items():
            if k in keep:
                listener.config = keep[k]
            else:
                listener.close()
        self.listeners = [li for li in self.listeners if li.config in keep.values()] + added
        ctx.loop.create_task(old_chain.close(finish=True))

    async def stop(self, drain: float = 0.0) -> None:
        """Stop accepting; let open connections finish for up to ``drain`` s; close the rest."""
        ctx = self.ctx
        self.close_listeners()
        if ctx is None:
            return
        ctx.draining = True
        ctx.upstreams.close()
        for conn in list(ctx.conns):
            conn.drain()
        deadline = ctx.loop.time() + drain
        while ctx.conns and ctx.loop.time() < deadline:
            await asyncio.sleep(0.05)
        for conn in list(ctx.conns):
            if conn.outcome == "OK":
                conn.outcome = "SHUTDOWN"
            conn.close()
        for task in list(ctx.handed):
            task.cancel()
        if ctx.handed:
            await asyncio.gather(*ctx.handed, return_exceptions=True)
        if ctx.store is not None:
            ctx.store.close()
        ctx.wake = None
        if self._tick is not None:
            self._tick.cancel()
        if ctx.access is not None:
            ctx.access.flush()
        await ctx.chain.close()
        ctx.reactor.close()
        ctx.pool.close()
