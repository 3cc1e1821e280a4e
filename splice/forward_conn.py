"""The egress gateway: a forward proxy, and transparent HTTP interception, for sandboxes.

``mode = "forward"``: what ``curl -x``, ``http_proxy`` and VPNkit speak. Absolute-form
requests (``GET http://host/path``) are routed on the URL's authority (a Host field
that disagrees is ignored, RFC 9112 §3.2.2), rewritten to origin-form without the
proxy's hop-by-hop fields, and spliced; each request on a keep-alive connection is
routed on its own. ``CONNECT host:port`` dials, answers 200, and splices both ways.
``mode = "egress-http"``: connections REDIRECTed to us; the name is the Host field,
the port the original destination's. An absolute-form request (``GET http://host/p``)
names its host in the URL instead: an origin acts on that authority and ignores Host
(RFC 9112 §3.2.2), so the URL's host is the one checked, and the request goes on in
origin-form with a Host naming it (as in forward mode and on the store's path).

Every destination passes the policy twice: the name (globs, ports, per-client lists)
and then every address it resolves to (no loopback, private, link-local... unless
``allow_networks``; no address an IP-literal deny pattern names). The socket connects
to the very address that was checked. Every request is routed on its own, whatever
``route_each_request`` says: a blind splice after the first request would let the
next ones past the policy and the proxy authentication.
"""

from __future__ import annotations

import asyncio
import re
import socket
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final

from splice.accesslog import Egress
from splice.egress import auth_cache
from splice.egress.addresses import dialable
from splice.egress.authority import parse_authority, parse_ip_literal, render_authority
from splice.errors import ProtocolError, RouteError, SpliceError
from splice.http_conn import R_BLIND, TUNNEL, HttpConn
from splice.io.dial import original_destination
from splice.relay import Key, Relay
from splice.resolve.base import Endpoint
from splice.routing.route import split_absolute_form
from splice.wire.http_head import Head

if TYPE_CHECKING:
    from splice.config import ListenConfig
    from splice.context import Context
    from splice.egress.policy import ForwardPolicy
    from splice.egress_tls import EgressTlsConn

#: what a client that sent CONNECT gets once the destination accepted
ESTABLISHED: Final = b"HTTP/1.1 200 Connection established\r\n\r\n"
# fields that belong to the client-proxy hop, and Host (we set it from the URL)
_HOP_FIELDS: Final = re.compile(
    rb"\r\n(?:proxy-connection|proxy-authorization|keep-alive|te|trailer|host)[ \t]*:[^\r]*",
    re.IGNORECASE,
)
_PROXY_AUTH: Final = re.compile(rb"\r\nproxy-authorization[ \t]*:[ \t]*([^\r]*)", re.IGNORECASE)
_CHALLENGE: Final[tuple[tuple[str, str], ...]] = (("Proxy-Authenticate", 'Basic realm="splice"'),)


class _Verify(Exception):
    """Credentials not seen before: verify them off the event loop, then route."""

    def __init__(self, header: bytes) -> None:
        self.header = header


class ForwardConn(HttpConn):
    #: origins are not pooled: each request is checked against the policy and dialled
    POOL_UPSTREAMS = False
    ALWAYS_ROUTE = True
    #: a client may send requests for several origins on one connection (urllib3 does)
    FRAME_RESPONSES = True
    __slots__ = ("original", "rule", "tunnel", "user")

    def __init__(
        self, ctx: Context, client: socket.socket, peer: tuple[str, int], lc: ListenConfig
    ) -> None:
        #: a CONNECT is waiting for its upstream: answer 200, then splice blind
        self.tunnel = False
        #: where an intercepted connection was going (egress-http), else None
        self.original: tuple[str, int] | None = None
        #: the proxy user and the policy rule that decided the last request (access log)
        self.user: str | None = None
        self.rule: str | None = None
        if lc.mode == "egress-http":
            self.original = original_destination(client)
        super().__init__(ctx, client, peer, lc)

    @property
    def policy(self) -> ForwardPolicy:
        fw = self.ctx.cfg.forward
        assert fw is not None
        return fw

    def _route(self, head: Head) -> None:
        if self.up_done or self.ctx.draining:
            self.close()
            return
        if self.ctx.store is not None and self.up is None:
            self._hand_over(head)
            return
        self.moving()
        # this request's own: a refused one must not log the last one's user or dial
        self.user = self.rule = None
        self.dst = ""
        try:
            user = self._authenticate(head)
        except _Verify as v:
            self._verify(v.header, head)
            return
        self.user = user
        host, port, raw = self._destination(head)
        self.host, self.shed, self.port = f"{host}:{port}", host, port
        checked_by(self, host, port, user)
        addrs = addresses_now(self.ctx, self.policy, host)
        if addrs is not None:
            self._checked(host, port, addrs, raw)
            return
        task = self.ctx.reactor.task(self.ctx.dns.resolve(host))
        task.add_done_callback(lambda t: self._dns_done(t, host, port, raw))

    def _hand_over(self, head: Head) -> None:
        """Recording or replaying: the one path where splice must see the bytes.

        The connection leaves the zero-copy engine for good and is served on asyncio
        streams by ``splice.exchange`` (which applies the same destination policy).
        """
        # egress-http: each request's Host names the host, the port is where the
        # connection was going (none when it was not REDIRECTed: the Host field's)
        port = self.original[1] if self.original else 0
        origin = ("http", "", port) if self.lc.mode == "egress-http" else None
        hand_over(self, first_head=head.raw, leftover=bytes(self.inbuf), origin=origin)

    def egress(self) -> Egress:
        return (self.lc.mode, self.user, self.dst, self.rule)

    def _destination(self, head: Head) -> tuple[str, int, bytes]:
        """(host, port, head to send) for this request; an empty head means CONNECT."""
        if head.method == b"CONNECT":
            if self.original is not None:
                raise ProtocolError("CONNECT on an intercepted connection")
            host, port = parse_authority(head.target, None)
            return host, port, b""
        if self.original is not None or self.lc.mode == "egress-http":
            return self._intercepted(head)
        if head.target[:7].lower() != b"http://":
            raise ProtocolError(
                "a proxy request needs an http:// URL; https goes through CONNECT",
            )
        split = split_absolute_form(head.target)
        assert split is not None
        host, port = parse_authority(split[0], 80)
        # Host names what was checked, not the client's spelling of it
        return host, port, self._origin_form(head, render_authority(host, port, 80), split[1])

    def _intercepted(self, head: Head) -> tuple[str, int, bytes]:
        """egress-http: (host, port, head to send). The host is the absolute-form URL's
        when the target is one, else the Host field's; the port is where the connection
        was going (else the URL's or the field's).

        An origin acts on an absolute-form target's authority, not on Host (RFC 9112
        §3.2.2): checking Host and forwarding the URL as it came would let
        ``GET http://denied.test/`` with ``Host: allowed.test`` reach the denied name on
        an allowed address. So, as forward mode and ``exchange._transparent`` do, the
        URL's host is the destination, and the request goes on in origin-form with a
        Host naming exactly what was checked (the client's Host is dropped).
        """
        target = head.target
        if target[:1] == b"/" or target == b"*":
            if head.host is None:
                raise ProtocolError("the request names no host")
            host, port = parse_authority(head.host, 80)
            split = None
        elif target[:7].lower() == b"http://":
            split = split_absolute_form(target)
            assert split is not None
            host, port = parse_authority(split[0], 80)
        else:
            raise ProtocolError("an intercepted http connection carries only http:// requests")
        if self.original is not None:
            port = self.original[1]
        if split is None:
            return host, port, self._strip(head.raw)
        return host, port, self._origin_form(head, render_authority(host, port, 80), split[1])

    @staticmethod
    def _origin_form(head: Head, authority: bytes, path: bytes) -> bytes:
        line_end = head.raw.find(b"\r\n")
        line = b"%s %s HTTP/%s\r\nHost: %s" % (head.method, path, head.version, authority)
        return line + _HOP_FIELDS.sub(b"", head.raw[line_end:])

    @staticmethod
    def _strip(raw: bytes) -> bytes:
        """Drop proxy hop fields from an intercepted head, keeping its Host."""
        return re.sub(
            rb"\r\n(?:proxy-connection|proxy-authorization)[ \t]*:[^\r]*",
            b"",
            raw,
            flags=re.IGNORECASE,
        )

    def _authenticate(self, head: Head) -> str | None:
        """The proxy user, from a verified-credentials cache; raises 407 when unknown.

        scrypt costs ~50 ms of CPU by design, too long for the event loop: a header
        not seen before is verified in a thread (``_verify``) and the request waits.
        """
        users = self.policy.users
        if not users:
            return None
        m = _PROXY_AUTH.search(head.raw)
        if m is None:
            raise RouteError("Proxy authentication required.", code="PROXY_AUTH_REQUIRED")
        known = auth_cache.known(users, m.group(1))
        if known is None:
            raise _Verify(m.group(1))
        if not known:
            raise RouteError("Proxy authentication failed.", code="PROXY_AUTH_REQUIRED")
        return known

    def _verify(self, header: bytes, head: Head) -> None:
        # bounded: past auth_cache.MAX_PENDING checks this raises 503 (Retry-After: 1)
        fut = auth_cache.verify(self.policy.users, header)

        def done(f: asyncio.Future[str | None]) -> None:  # auth_cache.known has the outcome
            if not self.closed:
                self.guarded(lambda: self._route(head))
                if not self.closed:
                    self.guarded(self.client_readable)

        fut.add_done_callback(done)

    def _dns_done(
        self, task: asyncio.Task[tuple[str, ...]], host: str, port: int, raw: bytes
    ) -> None:
        if self.closed:
            return

        def step() -> None:
            self._checked(host, port, task.result(), raw)
            self.client_readable()

        self.guarded(step)

    def _checked(self, host: str, port: int, addrs: tuple[str, ...], raw: bytes) -> None:
        addr = address_checked_by(self, host, port, addrs, self.user)
        self.dst = f"{addr}:{port}"
        # a tunnel never shares an upstream with plain requests
        key: Key = (host, port, addr, "direct" if raw else "tunnel")
        self.tunnel = not raw
        self.go(raw, key, Endpoint(shed=host, address=addr, source="forward"))

    def _start_exchange(self) -> None:
        if not self.tunnel:
            super()._start_exchange()
            return
        assert self.down is not None
        self.next = None
        self.tunnel = False
        self.state = TUNNEL
        self.rphase = R_BLIND  # no answers to frame: bytes both ways, to the end
        self.down.write(ESTABLISHED)
        self.client_readable()

    def outgoing(self, raw: bytes) -> bytes:
        return raw  # an egress proxy does not tell origins who its clients are

    def fail(self, err: SpliceError) -> None:
        if err.code == "PROXY_AUTH_REQUIRED":
            self._fail_with(err, _CHALLENGE)
        else:
            super().fail(err)

    def idle_timeout(self) -> float:
        return self.ctx.cfg.idle_timeout


def hand_over(conn: Relay, **serve: Any) -> None:
    """Give ``conn``'s client to the record/replay path (``splice.exchange``) for good:
    the one place splice must see the bytes, served on asyncio streams with the same
    destination policy. ``serve``: what ``serve_forward_stream`` takes besides."""
    from splice.exchange import policy_gates, serve_forward_socket

    ctx, fw = conn.ctx, conn.ctx.cfg.forward
    assert ctx.store is not None and fw is not None
    name_gate, policy_gate, replay_gate = policy_gates(ctx)

    def users_now() -> Mapping[str, str] | None:  # the table in force at each request
        live = ctx.cfg.forward
        return None if live is None else live.users

    client_ip = conn.peer[0]
    sock = conn.detach()
    task = ctx.reactor.task(
        serve_forward_socket(
            sock, runtime=ctx.store, policy_gate=policy_gate, name_gate=name_gate,
            replay_gate=replay_gate, users_now=users_now,
            client_ip=client_ip, idle_timeout=ctx.cfg.idle_timeout,
            head_timeout=ctx.cfg.head_timeout,
            connect_timeout=fw.connect_timeout, access=ctx.access, mode=conn.lc.mode, **serve,
        )
    )  # fmt: skip
    ctx.handed.add(task)
    task.add_done_callback(ctx.handed.discard)


class Refused(RouteError):
    """The policy refused a name; ``rule`` is what refused it (for the access log)."""

    def __init__(self, rule: str, message: str, *, code: str, host: str, port: int) -> None:
        super().__init__(message, code=code, shed=host, port=port)
        self.rule = rule


def check_name(policy: ForwardPolicy, host: str, port: int, client: str, user: str | None) -> str:
    """The name-level policy check: the rule that allowed ``host:port``.

    Raises:
        Refused: naming the rule that refused it.
    """
    decision = policy.decide(host, port, client_ip=client, user=user)
    if not decision.allowed:
        raise Refused(
            decision.rule,
            f"{host}:{port} is not allowed (rule {decision.rule!r}).",
            code=decision.code or "DESTINATION_DENIED",
            host=host,
            port=port,
        )
    return decision.rule


def checked_by(conn: ForwardConn | EgressTlsConn, host: str, port: int, user: str | None) -> None:
    """``check_name`` for a connection, which keeps the deciding rule for its access line."""
    try:
        conn.rule = check_name(conn.policy, host, port, conn.peer[0], user)
    except Refused as e:
        conn.rule = e.rule
        raise


def addresses_now(ctx: Context, policy: ForwardPolicy, host: str) -> tuple[str, ...] | None:
    """An IP literal, a ``[forward] hosts`` entry, or a cached DNS answer; None: ask DNS."""
    literal = parse_ip_literal(host)
    if literal is not None:
        return (str(literal),)
    static = policy.static_address(host)
    if static is not None:
        return (str(static),)  # chosen by the admin: dialled as written, like /etc/hosts
    return ctx.dns.cached(host)


def address_checked_by(
    conn: ForwardConn | EgressTlsConn,
    host: str,
    port: int,
    addrs: tuple[str, ...],
    user: str | None,
) -> str:
    """``pick_address`` for a connection; an address deny pattern that refused is the
    access line's rule, as a name's is."""
    try:
        return pick_address(conn.policy, host, port, addrs, client_ip=conn.peer[0], user=user)
    except Refused as e:
        conn.rule = e.rule
        raise


def pick_address(
    policy: ForwardPolicy,
    host: str,
    port: int,
    addrs: tuple[str, ...],
    *,
    client_ip: str | None = None,
    user: str | None = None,
) -> str:
    """The first address of ``host`` (resolved, or its ``hosts`` entry) the policy lets
    us dial: the one that will be dialled.

    Each is checked against the IP-literal deny patterns for ``client_ip`` and ``user``
    (every deny list when ``client_ip`` is None), so a name is refused where the address
    it leads to would be; then, unless the admin mapped the name in ``hosts``, against
    the non-public ranges. A denied address refuses like a denied name.

    Raises:
        Refused: DESTINATION_DENIED when no address was left but a denied one.
        RouteError: PRIVATE_ADDRESS when no address was left but non-public ones.
    """
    static = policy.static_address(host)
    candidates = addrs if static is None else (str(static),)
    denied: tuple[str, str] | None = None
    refused = ""
    for addr in candidates:
        ip = parse_ip_literal(addr)
        if ip is None:
            refused = f"{addr} (unparsable)"
            continue
        deny = policy.denied_address(ip, port, client_ip=client_ip, user=user)
        if deny is not None:
            denied = (addr, deny.rule)
            continue
        problem = None if static is not None else dialable(ip, policy.allow_networks)
        if problem is None:
            return addr
        refused = f"{addr} ({problem})"
    if denied is not None:
        addr, rule = denied
        raise Refused(
            rule,
            f"{host}:{port} is not allowed: it leads to {addr} (rule {rule!r}).",
            code="DESTINATION_DENIED",
            host=host,
            port=port,
        )
    raise RouteError(
        f"{host} resolves to a non-public address: {refused or 'none'}.",
        code="PRIVATE_ADDRESS",
        shed=host,
        port=port,
    )
