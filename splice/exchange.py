"""Egress connections with the record/replay store on: the asyncio path.

The engine hands over a client socket (``serve_forward_socket``): from a ``forward``
listener with the first request head read, absolute-form requests each keyed, replayed
or forwarded per ``[forward.store] mode`` (``splice.store.serve``); ``CONNECT`` with
``intercept_tls`` answered 200 and terminated with a leaf from the splice CA, the
requests inside being ``https://host:port/...``. Without interception a tunnel is
spliced blind, but ``replay`` refuses it (403 TUNNEL_NOT_REPLAYABLE). The transparent
listeners come with their ``origin``: ``egress-http`` as ``("http", "", port)``, each
request's Host field naming the host; ``egress-tls`` (intercepted, its ClientHello
still unread in the socket) as ``("https", sni, port)``, terminated here first. The
policy runs before every dial (``policy_gate``), its name check before replays too, and
its address rules on the address a replay's recording came from (``replay_gate``).
The policy and the users table are the ones in force at each request: a reload holds
for the open connections too, as it does on the engine's path.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import h11

from splice.accesslog import AccessLog
from splice.config import HEAD_TIMEOUT
from splice.egress import auth_cache
from splice.egress.authority import parse_authority
from splice.errors import BackendError, ProtocolError, RouteError, SpliceError
from splice.pages import RETRY_AFTER, render_error, wants_json
from splice.store.fetch import Incoming, Upstreams, first_field, read_body
from splice.store.h11io import READ_SIZE, HeadTimeout, HttpStream
from splice.store.keys import normalise_url, split_absolute
from splice.store.runtime import StoreRuntime
from splice.store.serve import AddressGate, Client, NameGate, ReplayGate, UsersNow, answer

if TYPE_CHECKING:
    from splice.context import Context
    from splice.egress.policy import ForwardPolicy

log = logging.getLogger("splice.exchange")
#: requests on one client connection; a build's keep-alive connection makes hundreds
MAX_REQUESTS = 100_000
#: a client that cannot finish a TLS handshake in this long is not a build tool
TLS_HANDSHAKE_TIMEOUT = 10.0
_CHALLENGE = (("Proxy-Authenticate", 'Basic realm="splice"'),)
Origin = tuple[str, str, int]


async def serve_forward_socket(
    sock: socket.socket, *, first_head: bytes = b"", leftover: bytes = b"", **kwargs: Any
) -> None:
    """Serve a detached client socket; ``kwargs`` as for ``serve_forward_stream``.

    The streams are made with a connected-callback, as ``asyncio.start_server`` does,
    because ``StreamWriter.start_tls`` only takes the server side of TLS for those.
    An intercepted egress-tls connection (an https ``origin``) is terminated as the
    socket is taken: its ClientHello is still unread in it, and a plain transport would
    read it as data before TLS could start.
    """
    loop = asyncio.get_running_loop()
    made: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    reader = asyncio.StreamReader(limit=READ_SIZE, loop=loop)
    protocol = asyncio.StreamReaderProtocol(reader, lambda r, w: made.append((r, w)), loop=loop)
    origin: Origin | None = kwargs.get("origin")
    tls = None
    if origin is not None and origin[0] == "https":
        ca = kwargs["runtime"].ca
        assert ca is not None, "StoreRuntime.open loads the CA with intercept_tls"
        tls = ca.server_context(origin[1])
    try:
        await loop.connect_accepted_socket(
            lambda: protocol, sock, ssl=tls,
            ssl_handshake_timeout=TLS_HANDSHAKE_TIMEOUT if tls is not None else None,
        )  # fmt: skip
    except (OSError, TimeoutError):  # the client broke off the TLS handshake
        sock.close()
        return
    r, w = made[0]  # the callback ran in connection_made, synchronously
    await serve_forward_stream(r, w, first_head=first_head, leftover=leftover, **kwargs)


async def serve_forward_stream(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    *,
    first_head: bytes,
    runtime: StoreRuntime,
    policy_gate: AddressGate,
    client_ip: str,
    leftover: bytes = b"",
    origin: Origin | None = None,
    name_gate: NameGate | None = None,
    replay_gate: ReplayGate | None = None,
    users: Mapping[str, str] | None = None,
    users_now: UsersNow | None = None,
    idle_timeout: float = 600.0,
    head_timeout: float = HEAD_TIMEOUT,
    connect_timeout: float = 5.0,
    access: AccessLog | None = None,
    mode: str = "forward",
) -> None:
    """Serve one client connection until it closes, errs or idles out. Never raises.

    ``origin``: a transparent listener's (see the module docstring); None for a proxy.
    ``users_now``: the users table in force, read at each request (else ``users``).
    ``head_timeout``: each request head must come whole in this long (else 408), as in
    the engine; ``idle_timeout`` bounds every other wait.
    ``access``, ``mode``: each request gets a ``store`` access line, naming the mode.
    """
    stream = HttpStream(reader, writer, h11.SERVER, idle_timeout)
    stream.feed(first_head + leftover)
    cx = Client(
        stream=stream,
        rt=runtime,
        upstreams=Upstreams(runtime.upstream_tls, connect_timeout, idle_timeout),
        policy_gate=policy_gate,
        client_ip=client_ip,
        name_gate=name_gate,
        replay_gate=replay_gate,
        users_now=users_now or (lambda: users or None),
        timeout=idle_timeout,
        head_timeout=head_timeout,
        connect_timeout=connect_timeout,
        access=access,
        mode=mode,
    )
    try:
        await _guarded(cx, origin)
    finally:
        await cx.upstreams.close()
        await cx.stream.close()


async def _guarded(cx: Client, origin: Origin | None) -> None:
    """Serve; an error the client should hear about becomes its error page."""
    try:
        await _serve_requests(cx, origin)
    except SpliceError as e:
        await _fail(cx, e)
    except h11.RemoteProtocolError as e:
        code = "HEAD_TOO_LARGE" if e.error_status_hint == 431 else "BAD_REQUEST"
        await _fail(cx, ProtocolError(f"Malformed request: {e}", code=code))
    except (OSError, TimeoutError, h11.LocalProtocolError, asyncio.IncompleteReadError):
        pass  # the peer went away or broke off: nothing to tell it
    except Exception:
        log.exception("record/replay exchange with %s failed", cx.client_ip)
        await _fail(cx, SpliceError())


async def _fail(cx: Client, err: SpliceError) -> None:
    if not cx.stream.can_respond:
        return
    extra = _CHALLENGE if err.code == "PROXY_AUTH_REQUIRED" else ()
    page = render_error(
        err, as_json=wants_json(cx.accept), retry_after=RETRY_AFTER.get(err.code), headers=extra
    )
    cx.stream.writer.write(page)
    try:
        await asyncio.wait_for(cx.stream.writer.drain(), cx.timeout)
    except (OSError, TimeoutError):
        pass


async def _serve_requests(cx: Client, origin: Origin | None) -> None:
    """Requests until the client closes; ``origin`` is a terminated tunnel's (https)."""
    for served in range(MAX_REQUESTS):
        event = await _next_head(cx, first=not served)
        if isinstance(event, h11.ConnectionClosed):
            return
        if not isinstance(event, h11.Request):
            raise ProtocolError("expected a request")
        cx.accept = first_field(event.headers.raw_items(), b"accept")
        if event.method == b"CONNECT":
            if origin is not None:
                raise ProtocolError("CONNECT inside a tunnel")
            await _connect(cx, event)
            return
        t0, inc, outcome, where = time.monotonic(), None, "RESET", ("", 0)
        try:
            inc = await _incoming(cx, event, origin)
            try:
                await read_body(cx.stream, inc, cx.timeout)
                outcome = await answer(cx, inc)
            finally:
                inc.body.close()
        except SpliceError as e:  # a refused name is a RouteError naming host and port
            outcome, where = e.code, (e.shed or "", e.port or 0)
            raise
        finally:
            if cx.access is not None:
                host, port = (inc.host, inc.port) if inc is not None else where
                ms = (time.monotonic() - t0) * 1000.0
                key = "" if inc is None else inc.key
                cx.access.exchange(cx.client_ip, host, port, cx.mode, cx.user, key, ms, outcome)
        conn = cx.stream.conn
        if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
            return
        conn.start_next_cycle()


async def _next_head(cx: Client, *, first: bool) -> h11.Event | type[h11.PAUSED]:
    """The next request (or the close); a head not whole in ``head_timeout`` is a 408
    HEAD_TIMEOUT, as the engine answers it: one byte every few seconds must not keep a
    connection, and its task, for ever."""
    t0 = time.monotonic()
    try:
        return await cx.stream.next_head(cx.timeout, cx.head_timeout, first=first)
    except HeadTimeout:
        if cx.access is not None:
            ms = (time.monotonic() - t0) * 1000.0
            cx.access.exchange(cx.client_ip, "", 0, cx.mode, cx.user, "", ms, "HEAD_TIMEOUT")
        err = ProtocolError("the request head did not arrive in time", code="HEAD_TIMEOUT")
        raise err from None


async def _incoming(cx: Client, req: h11.Request, origin: Origin | None) -> Incoming:
    """The request's destination and URL; authenticated and name-checked."""
    target = req.target
    if origin is None:
        scheme, host, port, path = split_absolute(target)
        if scheme != "http":
            raise ProtocolError("a proxy request needs an http:// URL; https goes through CONNECT")
        await _authenticate(cx, req)
    elif not origin[1]:  # egress-http: the Host field names the host
        scheme, host, port, path = _transparent(req, origin)
        await _authenticate(cx, req)  # as the engine would: users hold for every mode
    else:  # a terminated TLS tunnel: its CONNECT proved the user, if any
        _still_known(cx)
        if target.startswith(b"/"):
            (scheme, host, port), path = origin, target.decode("latin-1")
        else:
            scheme, host, port, path = split_absolute(target)
            if (scheme, host, port) != origin:
                raise ProtocolError("the request names another origin than its tunnel")
    if cx.name_gate is not None:
        cx.name_gate(host, port, cx.client_ip, cx.user)
    return Incoming(
        method=req.method.decode("ascii"),
        scheme=scheme,
        host=host,
        port=port,
        target=path if path.startswith("/") else "/" + path,
        url=normalise_url(scheme, host, port, path),
        headers=list(req.headers.raw_items()),
    )


def _transparent(req: h11.Request, origin: Origin) -> tuple[str, str, int, str]:
    """A request REDIRECTed to egress-http: the host from its Host field (the URL's, if
    absolute-form), the port the connection was going to (else the field's, or 80)."""
    if req.target.startswith(b"/"):
        field = first_field(req.headers.raw_items(), b"host")
        if not field:
            raise ProtocolError("the request names no host")
        host, port = parse_authority(field, 80)
        path = req.target.decode("latin-1")
    else:
        scheme, host, port, path = split_absolute(req.target)
        if scheme != origin[0]:
            raise ProtocolError(f"an {origin[0]} connection cannot carry {scheme} requests")
    return origin[0], host, origin[2] or port, path


async def _authenticate(cx: Client, req: h11.Request) -> None:
    """Set ``cx.user`` from the request's Proxy-Authorization, against the users table in
    force (a value proved once is not verified again until a reload changes the table)."""
    users = cx.users_now()
    if not users:
        cx.user = cx.proved = None
        return
    value = first_field(req.headers.raw_items(), b"proxy-authorization")
    if value is not None and value == cx.proved and users is cx.proved_in:
        return
    user = None
    if value is not None:
        # cached, else scrypt (~50 ms of CPU) in a bounded pool: 503 when it is full
        known = auth_cache.known(users, value)
        if known is None:
            known = await asyncio.shield(auth_cache.verify(users, value))
        user = known or None
    if user is None:
        cx.user = cx.proved = None
        raise RouteError("Proxy authentication required.", code="PROXY_AUTH_REQUIRED")
    cx.user, cx.proved, cx.proved_in = user, value, users


def _still_known(cx: Client) -> None:
    """Inside a terminated tunnel no request carries credentials: the user its CONNECT
    proved must still be in the users table in force (a reload may have removed it), and
    a tunnel that had none (egress-tls) is refused once users are required."""
    users = cx.users_now()
    if users and (cx.user is None or cx.user not in users):
        raise RouteError("Proxy authentication required.", code="PROXY_AUTH_REQUIRED")


async def _connect(cx: Client, req: h11.Request) -> None:
    host, port = parse_authority(req.target, None)  # host:port, as the engine asks
    await _authenticate(cx, req)
    if cx.name_gate is not None:
        cx.name_gate(host, port, cx.client_ip, cx.user)
    for _ in range(3):  # EndOfMessage (a CONNECT has no body), then PAUSED
        if await cx.stream.next_event(cx.timeout) is h11.PAUSED:
            break
    settings = cx.rt.settings
    if settings.intercept_tls:
        await _intercept(cx, (("https", host, port)))
    elif settings.mode == "replay":
        raise RouteError(
            f"CONNECT {host}:{port} cannot be replayed: the tunnel is not intercepted "
            "(set [forward.store] intercept_tls = true to record HTTPS).",
            code="TUNNEL_NOT_REPLAYABLE",
        )
    else:
        await _tunnel(cx, host, port)


async def _established(cx: Client) -> bytes:
    """Answer the CONNECT with 200; the bytes the client sent after it, if any."""
    await cx.stream.send(
        h11.Response(status_code=200, headers=[], reason=b"Connection established")
    )
    data, _closed = cx.stream.conn.trailing_data
    return data


async def _intercept(cx: Client, origin: Origin) -> None:
    assert cx.rt.ca is not None, "StoreRuntime.open loads the CA with intercept_tls"
    tls = cx.rt.ca.server_context(origin[1])
    if await _established(cx):
        raise ProtocolError("the client sent TLS before the tunnel was established")
    writer = cx.stream.writer
    await writer.start_tls(tls, ssl_handshake_timeout=TLS_HANDSHAKE_TIMEOUT)
    cx.stream = HttpStream(cx.stream.reader, writer, h11.SERVER, cx.timeout)
    await _serve_requests(cx, origin)


async def _tunnel(cx: Client, host: str, port: int) -> None:
    """A blind tunnel (not recorded): dial after the policy, answer 200, splice."""
    addr = await cx.policy_gate(host, port, cx.client_ip, cx.user)
    try:
        up_r, up_w = await asyncio.wait_for(asyncio.open_connection(addr, port), cx.connect_timeout)
    except TimeoutError:
        raise BackendError(f"{host}:{port} did not answer", code="UPSTREAM_TIMEOUT") from None
    except OSError as e:
        raise BackendError(f"{host}:{port}: {e.strerror or e}") from None
    try:
        early = await _established(cx)
        if early:
            up_w.write(early)
        await asyncio.gather(
            _pipe(cx.stream.reader, up_w, cx.timeout), _pipe(up_r, cx.stream.writer, cx.timeout)
        )
    finally:
        up_w.close()


async def _pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter, timeout: float) -> None:
    """Copy until EOF (then half-close ``dst``) or ``timeout`` of silence."""
    try:
        while data := await asyncio.wait_for(src.read(READ_SIZE), timeout):
            dst.write(data)
            async with asyncio.timeout(timeout):  # a peer that stops reading, too
                await dst.drain()
        if dst.can_write_eof():
            dst.write_eof()
    except (OSError, TimeoutError):
        dst.close()


def live_policy(ctx: Context, host: str, port: int) -> ForwardPolicy:
    """The ``[forward]`` table in force now (a reload replaces it)."""
    policy = ctx.cfg.forward
    if policy is None:
        raise RouteError(
            "The forward policy is gone (reloaded without [forward]).",
            code="DESTINATION_DENIED",
            shed=host,
            port=port,
        )
    return policy


def policy_gates(ctx: Context) -> tuple[NameGate, AddressGate, ReplayGate]:
    """The engine's destination policy (``splice.forward_conn``) as the three gates, each
    reading the policy in force when it is asked."""
    from splice.forward_conn import addresses_now, check_name, pick_address

    def name_gate(host: str, port: int, client_ip: str, user: str | None) -> None:
        check_name(live_policy(ctx, host, port), host, port, client_ip, user)

    async def policy_gate(host: str, port: int, client_ip: str, user: str | None) -> str:
        policy = live_policy(ctx, host, port)
        check_name(policy, host, port, client_ip, user)
        addrs = addresses_now(ctx, policy, host)
        if addrs is None:
            addrs = await ctx.dns.resolve(host)
            policy = live_policy(ctx, host, port)  # a reload may have come meanwhile
            check_name(policy, host, port, client_ip, user)
        return pick_address(policy, host, port, addrs, client_ip=client_ip, user=user)

    def replay_gate(
        host: str, port: int, address: str | None, client_ip: str, user: str | None
    ) -> None:
        # the address the recording came from; a recording older than that field: what
        # the name leads to now, when that is known without DNS (offline, it may not be)
        policy = live_policy(ctx, host, port)
        addrs = (address,) if address else addresses_now(ctx, policy, host)
        if addrs is not None:
            pick_address(policy, host, port, addrs, client_ip=client_ip, user=user)

    return name_gate, policy_gate, replay_gate
