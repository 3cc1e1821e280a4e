"""An HTTP client connection: every request routed on its own, bodies spliced by framing.

The client -> VM direction follows HTTP/1.1 framing: read a head, route it, forward
it, then forward exactly its body (Content-Length: spliced for its length;
chunked: passed on by its chunk framing), then read the next head. The VM ->
client direction follows the answers' framing too (``framed``, the default
``frame_responses = "all"``): each request sent is owed one answer, and VM bytes
past them are nobody's, so they never pass for the answer to a later request, which
on a connection a front pools across sheds may be another person's. Unframed
(``"fronts"``, a client that is not one) it is a blind splice. A request for the
upstream already open goes down it; a request for another shed or port first
retires the old upstream: framed, it is dropped once every answer owed has passed;
blind, its write side is shut and its last response flows to the client until the
VM closes. Only then is the new target dialled. So no response is cut short, even
for a client that pipelines across sheds; it only waits.

After an Upgrade request the client is not read until the VM answers: ``101``
turns both directions into a blind splice for good; anything else and request
parsing goes on. An error answers the request that caused it and closes.

A request that ends its connection (``Connection: close``: a client that makes
one connection per request) goes to an idle keep-alive upstream from the pool when
one is there (conn-cost rule 10: connect, accept and close are most of a new
connection's cost). Its ``close`` is taken off, and the VM -> client direction
then follows the response's framing so that the upstream can be parked again the
moment the response ends; the client gets ``Connection: close`` and a FIN. A
response whose end is not known from its head is relayed blind, as always, and its
connection is not kept. If a reused connection turns out closed before a byte of
answer came, the request is sent once more on a fresh connection when splice still
has all of it (no body, or a body that came whole with the head).
"""

from __future__ import annotations

import select
import socket
import time
from typing import TYPE_CHECKING, Final

from splice.errors import BackendError, ProtocolError, SpliceError
from splice.io.flow import DONE, EOF, Flow
from splice.io.native import NATIVE_ONTO
from splice.io.unread import unread
from splice.pages import RETRY_AFTER, render_error
from splice.relay import Key, Relay
from splice.resolve.base import Endpoint
from splice.routing.route import split_absolute_form, split_port_prefix
from splice.wire.chunked import ChunkedFraming, State
from splice.wire.forwarded import rewrite_forwarded
from splice.wire.http_head import Head, parse_head
from splice.wire.http_response import (
    Body,
    ResponseHead,
    parse_response_head,
    without_connection_fields,
)

if TYPE_CHECKING:
    from splice.config import ListenConfig
    from splice.context import Context

# the clock as a module Final: compiled, ``time.perf_counter`` is a lookup in the
# ``time`` module's dict at every call
_clock: Final = time.perf_counter
# what the client side is doing (RESPONSE: the connection's last request is sent)
READ_HEAD: Final = 0
ROUTING: Final = 1
BODY: Final = 2
CHUNKED: Final = 3
WAIT_UPGRADE: Final = 4
TUNNEL: Final = 5
CLOSING: Final = 6
RESPONSE: Final = 7
# what the VM -> client direction of a keep-alive exchange is reading (R_BLIND: not
# framed, relayed as it comes). A plain int, not Optional: mypyc trusts mypy's narrowing
# of an attribute across a call that may reset it, and would unbox a None
R_BLIND: Final = 0
R_HEAD: Final = 1
R_LENGTH: Final = 2
R_CHUNKED: Final = 3
#: framed keep-alive: every request sent has its answer; VM bytes now are nobody's
R_IDLE: Final = 4
#: bytes read per recv while collecting a head
_READ: Final = 64 * 1024
#: methods a request may be sent twice with (RFC 9110 §9.2.2)
_IDEMPOTENT: Final = frozenset((b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"))
#: client bytes discarded while lingering after an error page, before we give up
_LINGER_BYTES: Final = 1 << 20


def read_onto(sock: socket.socket, fd: int, buf: bytearray) -> int:
    """Read what ``sock`` (whose fd is ``fd``) has, up to ``_READ``, onto the end of
    ``buf``: the count, 0 at the end of its stream, -1 when nothing is there now."""
    if NATIVE_ONTO is not None:
        return NATIVE_ONTO(fd, buf, _READ)
    try:
        data = sock.recv(_READ)
    except BlockingIOError:
        return -1
    buf += data
    return len(data)


class HttpConn(Relay):
    __slots__ = (
        "asked",
        "body_left",
        "cdrained",
        "chunk",
        "failed_sent",
        "framed",
        "front",
        "got_answer",
        "head",
        "head_request",
        "inbuf",
        "interim_sent",
        "lingered",
        "next",
        "pending_error",
        "pooled",
        "rbuf",
        "rchunk",
        "replay",
        "req_host",
        "retire_mark",
        "retiring",
        "reusable",
        "rleft",
        "route_host",
        "rphase",
        "served",
        "state",
        "udrained",
        "wants_close",
    )

    #: requests that close their connection may use pooled keep-alive upstreams
    POOL_UPSTREAMS = True
    #: route every request whatever ``route_each_request`` says (egress listeners: a
    #: blind splice after the first request would let the next ones past the policy)
    ALWAYS_ROUTE = False
    #: frame every response, whoever the client is (``frame_responses`` otherwise)
    FRAME_RESPONSES = False

    def __init__(
        self, ctx: Context, client: socket.socket, peer: tuple[str, int], lc: ListenConfig
    ) -> None:
        super().__init__(ctx, client, peer, lc)
        self.inbuf = bytearray()
        self.state = READ_HEAD
        self.head: Head | None = None
        self.body_left = 0
        self.chunk: ChunkedFraming | None = None
        #: (raw head, key, endpoint) waiting for the upstream to open or retire
        self.next: tuple[bytes, Key, Endpoint] | None = None
        self.retiring = False
        #: bytes moved (``activity``) when the retire's current period began
        self.retire_mark = 0
        self.lingered = 0
        #: request heads read so far on this connection
        self.served = 0
        #: an error page waiting for the old upstream's last responses to reach the client
        self.pending_error: tuple[SpliceError, tuple[tuple[str, str], ...]] | None = None
        self.cdrained = False
        #: the Host that chose the open upstream (same Host again: no re-routing work)
        self.route_host: bytes | None = None
        #: the host this request was routed by (the absolute-form authority wins)
        self.req_host = b""
        #: None until the first request asks: may this peer set X-Forwarded-*?
        self.front: bool | None = None
        #: a keep-alive exchange's response reader: phase, unread
        #: VM bytes, body bytes left, chunk framing
        self.rphase = R_BLIND
        self.rbuf = bytearray()
        self.rleft = 0
        self.rchunk: ChunkedFraming | None = None
        self.head_request = False
        #: the response said the VM keeps the connection
        self.reusable = False
        #: a byte of answer has come on this upstream
        self.got_answer = False
        #: the last read of the upstream was short under an event without a hang-up:
        #: nothing was left unread then (bytes that come later raise an event)
        self.udrained = False
        #: a request on a reused pooled connection that can be sent again if the VM
        #: turns out to have closed it: (next, head, the whole body, b"" for none)
        self.replay: tuple[tuple[bytes, Key, Endpoint], Head, bytes] | None = None
        #: this request closes the connection and went on a pooled upstream
        self.pooled = False
        #: every response on this connection is framed (``_expect``), not relayed blind
        self.framed = self._frames(ctx, peer[0])
        #: framed: HEAD or not, for each request sent after the one being answered
        self.asked: list[bool] = []
        #: framed: a 1xx passed for the answer owed now (its final answer still comes)
        self.interim_sent = False
        #: the request of ``pending_error`` had gone to the VM (an error in its body)
        self.failed_sent = False
        #: the last request sent asked to end the connection after its answer
        self.wants_close = False
        self.start()

    def _frames(self, ctx: Context, peer: str) -> bool:
        """Frame this connection's responses? Blind, bytes a VM sends past its last
        answer would reach the client as the answer to its next request, which may be
        for another shed: a client that pools one connection across sheds (a front)
        meets that. Framing costs about what the blind relay does (bench README,
        "Framed answers"), so every connection gets it unless ``frame_responses`` keeps
        it to fronts."""
        cfg = ctx.cfg
        if not (cfg.route_each_request or self.ALWAYS_ROUTE):
            return False  # the requests after the first are not seen: nor are answers
        if self.FRAME_RESPONSES or cfg.frame_responses == "all":
            return True
        return bool(ctx.fronts) and peer in ctx.fronts

    # -- the client -> VM direction ---------------------------------------------

    def client_readable(self) -> None:
        self.cdrained = False
        if self.state == CLOSING:
            self._linger_read()
            return
        if self.state == RESPONSE:
            self._read_after_close()
            return
        while not self.closed:
            st = self.state
            if st == READ_HEAD:
                more = self._step_head()
            elif st == BODY:
                more = self._step_body()
            elif st == CHUNKED:
                more = self._step_chunked()
            elif st == TUNNEL:
                more = self._step_tunnel()
            else:
                return
            if not more:
                return

    def _fill(self) -> bool:
        """Read client bytes into ``inbuf``; False when there are none for now."""
        if self.cdrained:
            return False
        n = read_onto(self.client, self.cfd, self.inbuf)
        if n < 0:
            return False
        # edge-triggered, no hang-up in the event: a short read drained the socket
        self.cdrained = self.cshort and n < _READ
        if not n:
            if self.inbuf and self.state == READ_HEAD:
                # a head cut off by the client's FIN can never be answered; an earlier
                # request's answer may still be on its way: the FIN goes on as usual
                self.inbuf.clear()
                if self.up is None:
                    self.outcome = "CLIENT_CLOSED"
                    self.close()
                    return False
            self.on_client_eof()
            return False
        return True

    def _step_head(self) -> bool:
        if self.need_proxy is not None and not self.served and self.inbuf:
            if not self.take_proxy_header(self.inbuf):
                return not self.closed and self._fill()
            self.need_proxy = None
        inbuf = self.inbuf
        if not inbuf:
            return self._fill()
        t = _clock()
        # empty lines before a request line are looked for only when the head does not
        # parse: a check of every head's first byte costs more than the scan saves
        try:
            head = parse_head(inbuf, self.ctx.cfg.max_head)
        except ProtocolError:
            if not _skip_empty_lines(inbuf):
                raise
            return True  # the head after them, on the next step
        if head is None:
            if _skip_empty_lines(inbuf) and not inbuf:
                return self._fill()  # only empty lines: no head has begun
            # a later head's clock starts with its first bytes (the first head's ran
            # from the accept). Only a head that did not come whole costs the timer:
            # the next read is at once, so the start is the same
            deadlines = self.ctx.head_deadlines
            if self.served and self not in deadlines:
                deadlines.add(self, self.ctx.loop.time())
            return self._fill()
        self.ctx.metrics.head_parse.observe(_clock() - t)
        del self.inbuf[: head.length]
        self.ctx.head_deadlines.discard(self)
        self.head = head
        self.served += 1
        self.state = ROUTING
        self._route(head)
        return True

    def _step_body(self) -> bool:
        flow = self.up_flow
        assert flow is not None
        if self.inbuf:
            k = min(self.body_left, len(self.inbuf))
            flow.write(bytes(self.inbuf[:k]))
            del self.inbuf[:k]
            self.body_left -= k
        if self.body_left == 0:
            self._end_request()
            return True
        if flow.blocked:
            return False
        r, moved = flow.pump_at_most(self.body_left, self.cshort)
        self.body_left -= moved
        if r == DONE:
            self._end_request()
            return True
        if r == EOF:
            self.on_client_eof()
        return False

    def _step_chunked(self) -> bool:
        flow, c = self.up_flow, self.chunk
        assert flow is not None and c is not None
        if flow.blocked:
            return False
        if self.inbuf:
            n = c.scan(self.inbuf)
            if n:
                flow.write(bytes(self.inbuf[:n]))
                del self.inbuf[:n]
            if c.state is State.DONE:
                self._end_request()
                return True
            if self.inbuf:
                return self._fill()
        if c.state is State.DATA and c.remaining:
            r, moved = flow.pump_at_most(c.remaining)
            c.data_passed(moved)
            if r == EOF:
                self.on_client_eof()
            return r == DONE
        return self._fill()

    def _step_tunnel(self) -> bool:
        flow = self.up_flow
        assert flow is not None
        if self.inbuf:
            data = bytes(self.inbuf)
            self.inbuf.clear()
            if not flow.write(data):
                return False
        r = flow.pump(self.cshort)  # a short read under a real event: no read to EAGAIN
        if r == EOF:
            self.on_client_eof()
        else:
            self._relay_only()
        return False

    def _relay_only(self) -> None:
        """In a tunnel, later events skip the state machine (``Relay.relay_only``):
        the client's once ``inbuf`` is flushed, the VM's once its first byte is timed."""
        if (
            self.state != TUNNEL
            or self.rphase != R_BLIND
            or self.retiring
            or self.handshake is not None
        ):
            return
        if not self.inbuf:
            self.relay_only(self.cfd)
        if not self.dial_t:
            self.relay_only(self.ufd)

    def _end_request(self) -> None:
        assert self.head is not None
        self.chunk = None
        self.state = WAIT_UPGRADE if self.head.upgrade else READ_HEAD
        self.head = None  # an error on the next head must not borrow this one's details
        if self.pooled:
            # after a request that closes the connection nothing more is a request
            # (RFC 9112 §9.6): the client is not read until its response is done
            self.state = RESPONSE
            self.inbuf.clear()
            return
        if (
            not self.ctx.cfg.route_each_request
            and self.state == READ_HEAD
            and not self.ALWAYS_ROUTE
        ):
            self.state = TUNNEL
        if self.ctx.draining:
            self.drain()

    def drain(self) -> None:
        """Between requests: shut the VM's write side; it ends its response and closes."""
        if self.state != READ_HEAD or self.inbuf or self.closed:
            return
        if self.up is None:
            self.outcome = "SHUTDOWN"
            self.close()
        elif self.up_flow is not None and not self.up_flow.shut:
            self.up_flow.finish()

    def idle_timeout(self) -> float:
        if self.state != TUNNEL:
            return super().idle_timeout()
        sc = self.ctx.cfg.sheds.get(self.shed)
        if sc is not None and sc.idle_timeout is not None:
            return sc.idle_timeout
        return self.ctx.cfg.idle_timeout_upgraded

    # -- routing ----------------------------------------------------------------

    def _route(self, head: Head) -> None:
        host = head.host
        if (
            host is not None
            and host == self.route_host
            and head.target[:1] == b"/"
            and head.target[:6] != b"/port/"
            and not self.up_done
            and not self.retiring
        ):
            self._forward_head(head.raw)  # same Host, same upstream: routed already
            return
        self.route_host = None
        self.moving()
        # until this request is routed it has no shed: a failure must not be logged
        # (or counted) under the shed of the request before it
        self.shed, self.port = "", 0
        if head.method == b"CONNECT":
            raise ProtocolError("CONNECT is not relayed to sheds", code="METHOD_NOT_ALLOWED")
        if head.target[:1] != b"/":
            split = split_absolute_form(head.target)
            if split is not None:
                host = split[0].lower()
        if not host:
            raise ProtocolError("the request names no host")
        self.req_host = host
        self.host = host.decode("ascii", "replace")
        name = self.ctx.host_name(host)
        if self.up_done or self.ctx.draining:
            # the VM closed this connection (its FIN has gone to the client), or we
            # are stopping: the client retries on a new connection
            self.close()
            return
        self.route_name(name)

    def routed(self, shed: str, label_port: int | None, ep: Endpoint) -> None:
        head = self.head
        assert head is not None
        self.shed = shed
        raw, port = head.raw, label_port
        if label_port is None:
            port, raw = self._path_port(head)
        port = self.ctx.policy(shed).pick_port(shed, port, self.ctx.cfg.default_port)
        self.port = port
        self.go(raw, (shed, port, ep.address, self.ctx.dial_mode(shed)), ep)

    def go(self, raw: bytes, key: Key, ep: Endpoint) -> None:
        """Send ``raw`` to ``key``'s upstream: the open one, or a new one after a retire."""
        if self.up is not None and not self.up_done and key == self.key:
            self.prev = None  # the same target: the run goes on
            self._remember_route(raw)
            self._forward_head(raw)
            return
        self.next = (raw, key, ep)
        if self.up is not None:
            self._retire()
        else:
            self._open_next()

    def _remember_route(self, raw: bytes) -> None:
        """A plain origin-form request can take the same route next time without work."""
        head = self.head
        assert head is not None
        if head.host and raw is head.raw and head.target[:1] == b"/":
            self.route_host = head.host

    @staticmethod
    def _path_port(head: Head) -> tuple[int | None, bytes]:
        """A ``/port/N/`` prefix picks N and is stripped from the target sent on."""
        target = head.target
        prefix = b""
        if target[:1] != b"/":
            split = split_absolute_form(target)
            if split is None:
                return None, head.raw
            prefix = target[: len(target) - len(split[1])]
            target = split[1]
        port, rest = split_port_prefix(target)
        if port is None:
            return None, head.raw
        line_end = head.raw.find(b"\r\n")
        line = b"%s %s%s HTTP/%s" % (head.method, prefix, rest, head.version)
        return port, line + head.raw[line_end:]

    # -- upstreams ----------------------------------------------------------------

    def _open_next(self) -> None:
        assert self.next is not None
        raw, key, ep = self.next
        head = self.head
        if head is None or not self._keepalive_ok(head, key):
            if self.framed:  # the old upstream's unread bytes are nobody's
                self.rphase = R_IDLE
                self.asked.clear()
                self.rbuf.clear()
                self.udrained = False
            self.open_upstream(key)
            return
        self.next = (without_connection_fields(raw), key, ep)
        self.pooled = True
        self.rphase, self.head_request = R_HEAD, head.method == b"HEAD"
        self.key = key
        self._count(key[0], key[1])
        sock = self.ctx.upstreams.take(key)
        if sock is None:
            self.dial_key(key)
            return
        self.adopt(key, sock)
        size = head.content_length or 0
        if not head.chunked and size <= len(self.inbuf):
            # no body, or all of it came with the head: it can be sent again
            self.replay = (self.next, head, bytes(self.inbuf[:size]))
        self._start_exchange()

    def _keepalive_ok(self, head: Head, key: Key) -> bool:
        """May this request use (and leave) a pooled keep-alive upstream?

        Only a request that closes its connection, so the client -> VM direction has
        nothing after it; never one that carries a PROXY header (it names one client);
        and only an idempotent one (RFC 9110 §9.2.2): a pooled connection the VM closed
        meanwhile is found out by sending, and only such a request may then be sent
        again (RFC 9112 §9.3.1). Any other gets a connection of its own.
        """
        ctx = self.ctx
        if not (
            head.close
            and head.method in _IDEMPOTENT
            and head.version == b"1.1"
            and not head.upgrade
            and self.POOL_UPSTREAMS
            and ctx.upstreams.enabled
            and ctx.cfg.route_each_request
        ):
            return False
        return self.proxy_version(key[0]) is None

    def upstream_ready(self) -> None:
        preamble = self.proxy_preamble(None)
        if preamble:
            assert self.up_flow is not None
            self.up_flow.write(preamble)
        self._start_exchange()

    def _start_exchange(self) -> None:
        assert self.next is not None
        raw = self.next[0]
        self.next = None
        self._remember_route(raw)
        self._forward_head(raw)
        if self.state != RESPONSE:
            self.client_readable()

    def _forward_head(self, raw: bytes) -> None:
        head, flow = self.head, self.up_flow
        assert head is not None and flow is not None
        flow.write(self.outgoing(raw))
        self.dial_t = _clock()
        if self.framed and not self.pooled:
            self._expect(head.method == b"HEAD")
            self.wants_close = head.close
        if head.chunked:
            self.chunk = ChunkedFraming()
            self.state = CHUNKED
        elif head.content_length:
            self.body_left = head.content_length
            self.state = BODY
        else:
            self._end_request()

    def outgoing(self, raw: bytes) -> bytes:
        """The head as the VM gets it: with our X-Forwarded-* unless from a trusted front."""
        cfg = self.ctx.cfg
        if not cfg.forwarded_headers:
            return raw
        if self.front is None:
            self.front = bool(self.ctx.fronts) and self.peer[0] in self.ctx.fronts
        if self.front:
            return raw
        head = self.head
        host = self.req_host or (head.host if head is not None else None)
        return rewrite_forwarded(
            raw,
            self.peer[0],
            host or b"",
            b"http",
            rfc7239=cfg.forwarded,
            present=head is None or head.forwarded,
        )

    def _retire(self) -> None:
        """Shut the old upstream's write side; the next one opens when it has closed,
        or, framed, once it has answered every request sent to it."""
        self.retiring = True
        if self.interim_sent:
            # framed, a 1xx passed and its final answer is still owed: a client that took
            # the 1xx for the end (nginx does, for a HEAD) would take that final answer
            # for the next target's
            self._unframed_end()
            return
        if self.rphase == R_IDLE:  # framed, and nothing is owed: on at once
            if self._old_upstream_done():
                self._retired()
            return
        assert self.up_flow is not None
        self.up_flow.finish()
        self.retire_mark = self.activity()
        self.ctx.retire_deadlines.add(self, self.ctx.loop.time())

    def on_retire_timeout(self) -> None:
        """A ``retire_timeout`` went by and the old upstream has not closed.

        While its response still moves it gets another period: a long download or a
        slow reader is not stuck. Once a whole period moved nothing, the VM will not
        end it; relayed blind, the response may have stopped anywhere, and a next
        response would land inside it. Nothing more can be answered on this
        connection: it closes, and the client retries the requests left on a new one.
        """
        if not self.retiring or self.closed:
            return
        moved = self.activity()
        if moved != self.retire_mark:
            self.retire_mark = moved
            self.ctx.retire_deadlines.add(self, self.ctx.loop.time())
            return
        self.outcome = "RETIRE_TIMEOUT"
        self.close()

    def _old_upstream_done(self) -> bool:
        """Retiring: the old upstream owes nothing more (closed, or framed and every
        answer passed) and all its bytes reached the client."""
        return (self.up_done or self.rphase == R_IDLE) and (self.down is None or self.down.idle)

    def _may_move_on(self) -> bool:
        """Framed: may the next answer (another target's, or our error page) follow?

        Only when every answer owed passed whole; and for a page, when the request it
        answers is the next one the client waits for: a request whose head failed (it
        never went to the VM) once all answers passed, or a request whose body failed,
        the one answer owed, when the VM closed without a byte of it (if it answered,
        a page would be a second answer). Otherwise a response ran blind to the VM's
        close (the next answer would join its body), or the VM closed with answers
        owed (the next would pass for them)."""
        if self.pending_error is not None and self.failed_sent:
            return self.rphase == R_HEAD and not self.asked
        return self.rphase == R_IDLE

    def _unframed_end(self) -> None:
        """Framed, the next answer cannot safely follow: the connection ends here (with
        the error's outcome when an error page was waiting, which is not sent)."""
        if self.pending_error is None:
            self.outcome = "RETIRE_UNFRAMED"
        self._hang_up()

    def _retired(self) -> None:
        """The old upstream is done and its bytes reached the client: move on."""
        self.retiring = False
        self.ctx.retire_deadlines.discard(self)
        if self.framed and not self._may_move_on():
            self._unframed_end()
            return
        self.drop_upstream()
        self.up_done = False
        if self.pending_error is not None:
            self._send_page(*self.pending_error)
            return
        try:
            self._open_next()
        except SpliceError as e:
            self.fail(e)

    def on_upstream_eof(self) -> None:
        if self.retiring:
            self.up_done = True
            if self.down is None or self.down.idle:
                self._retired()
            return
        if self._idle_vm_left():
            return
        super().on_upstream_eof()

    def _idle_vm_left(self) -> bool:
        """Framed, with nothing owed and no request on its way: the VM ended a keep-alive
        connection its last answer said it would keep (its own idle timeout, a restart).
        Drop it and keep the client, whose next request dials again. Passed on, the
        VM's FIN would end the client's connection too, and a front that pools it
        (Caddy, nginx) may have a request for another shed on its way, which would get
        no answer."""
        if (
            self.rphase != R_IDLE
            or self.wants_close  # the VM's close is the end the client asked for,
            or not self.reusable  # or the one its answer announced (close, HTTP/1.0)
            or self.retiring
            or self.client_done
            or self.ctx.draining
            or self.state not in (READ_HEAD, ROUTING)
            or self.next is not None  # a new upstream is opening (or in its handshake)
            or not (self.down is None or self.down.idle)  # its bytes still on their way
        ):
            return False
        # rbuf is empty here (bytes while nothing is owed end the connection) and the
        # next upstream's events set udrained afresh: only the route shortcut goes
        self.route_host = None  # the same Host dials again: no shortcut to a dropped VM
        self.drop_upstream()
        return True

    def down_writable(self) -> None:
        down = self.down
        assert down is not None
        if not down.on_writable():
            return
        if self.state == CLOSING:
            self._start_linger()
        elif self.retiring and self._old_upstream_done():
            self._retired()
        else:
            if self.up is not None:
                self.upstream_readable()
            self.maybe_close()

    def upstream_readable(self) -> None:
        if self.dial_t and self.handshake is None:
            self.ctx.metrics.first_byte.observe(_clock() - self.dial_t)
            self.dial_t = 0.0
        if self.rphase != R_BLIND and self.handshake is None:
            self.udrained = False  # an event: what an earlier read proved is stale
            self._pump_response()
            if self.retiring and self.rphase == R_IDLE and self._old_upstream_done():
                self._retired()  # framed: the last answer owed has passed
            return
        waiting = self.state == WAIT_UPGRADE and self.handshake is None and not self.retiring
        if waiting and not self._peek_upgrade():
            return
        super().upstream_readable()
        self._relay_only()

    def _peek_upgrade(self) -> bool:
        """Look at the VM's answer to an Upgrade request; False until it shows."""
        assert self.up is not None
        try:
            peek = self.up.recv(12, socket.MSG_PEEK)
        except BlockingIOError:
            return False
        if 0 < len(peek) < 12:
            return False
        switched = peek[:5] == b"HTTP/" and peek[8:12] == b" 101"
        self.state = TUNNEL if switched else READ_HEAD
        self.ctx.reactor.soon(self._resume)
        return True

    # -- a keep-alive exchange: the response's end, then the upstream is parked ---

    def early_bytes(self, data: bytes) -> None:
        """Framed, VM bytes that came with the Connect API's answer are framed too."""
        if self.rphase == R_BLIND:
            super().early_bytes(data)
        else:
            self.rbuf += data

    def _pump_response(self) -> None:
        """VM -> client following the response framing, until the response ends (framed
        keep-alive: on through the answers owed, then idle)."""
        down = self.down
        assert down is not None
        while self._framing() and not down.blocked:
            ph = self.rphase
            if ph == R_HEAD:
                if self.rbuf:
                    if self._take_head():
                        continue
                    if self.rphase != R_HEAD or not self._framing():
                        return  # relayed blind from now on
            elif ph == R_IDLE:
                if self.retiring:
                    self.rbuf.clear()  # about to be dropped: its bytes are nobody's
                    return
                if self.rbuf:
                    self._unsolicited()
                    return
                if self.udrained:
                    # a read in this event ended the answer and drained the socket:
                    # bytes that come later raise an event of their own
                    return
            elif ph == R_LENGTH:
                self.udrained = False  # a read that fills its budget proves nothing
                r, moved = down.pump_at_most(self.rleft, self.ushort)
                self.rleft -= moved
                if r == DONE:
                    self._response_done()
                    continue  # framed: pipelined answers may wait in the socket
                if r == EOF:
                    self._response_cut()
                return
            else:
                c = self.rchunk
                assert c is not None
                if self.rbuf:
                    if not self._pass_chunks():
                        return
                    if self.rphase != R_CHUNKED:
                        continue  # the body ended
                if not self.rbuf and c.state is State.DATA and c.remaining:
                    self.udrained = False
                    r, moved = down.pump_at_most(c.remaining)
                    c.data_passed(moved)
                    if r == EOF:
                        self._response_cut()
                    if r != DONE:
                        return
                    continue
            if not self._read_answer():
                return

    def _framing(self) -> bool:
        """A response is being framed on a live upstream. A method, not a condition
        in the loop: mypyc would trust the loop's narrowing of ``self.up`` to a socket
        after ``_take_head`` may have dropped it."""
        return self.rphase != R_BLIND and self.up is not None

    def _pass_chunks(self, head: bytes = b"") -> bool:
        """Forward the chunked body bytes in ``rbuf``, after ``head`` in the same send;
        False when the rest is now relayed blind."""
        c, down = self.rchunk, self.down
        assert c is not None and down is not None
        try:
            n = c.scan(self.rbuf)
        except ProtocolError:
            if head:
                down.write(head)
            if self.framed and not self.pooled:
                # the client has part of this answer: it ends here, and so does the
                # connection (the bytes past a broken chunk are nobody's answer)
                self.outcome = "BAD_RESPONSE"
                self._hang_up()
            else:
                self._go_blind()  # the VM's framing is its own business
            return False
        if n or head:
            down.write(head + self.rbuf[:n])
            del self.rbuf[:n]
        if c.state is State.DONE:
            self._response_done()
        return True

    def _read_answer(self) -> bool:
        """More VM bytes into ``rbuf``; False when there are none for now."""
        assert self.up is not None
        try:
            n = read_onto(self.up, self.ufd, self.rbuf)
        except ConnectionError:
            if self._idle_vm_left():
                return False  # a reset between answers ends the VM's side only
            if self.got_answer or self.replay is None:
                raise
            self._redial()
            return False
        if n < 0:
            return False
        if not n:
            if not self.got_answer and self.replay is not None:
                self._redial()
            elif self.framed and not self.pooled:
                # between answers or inside a head: nothing was relayed blind (a head
                # cut short is dropped); ``_retired`` knows from rphase what is owed
                self.rbuf.clear()
                self.on_upstream_eof()
            else:
                self._go_blind()
            return False
        self.got_answer = True
        self.udrained = self.ushort and n < _READ
        return True

    def _take_head(self) -> bool:
        """Forward a response head from ``rbuf``: True to go on with the loop (a head
        passed, maybe its whole response), False when the head is not all there yet or
        the rest is now relayed blind."""
        try:
            rh = parse_response_head(self.rbuf, head_request=self.head_request, close=self.pooled)
        except ProtocolError as e:
            if self.framed and not self.pooled:
                self._bad_answer(f"The shed's answer is not HTTP splice can frame: {e}.")
            else:
                self._go_blind()
            return False
        if rh is None:
            return False
        if rh.interim:
            self._send_head(rh, 0)
            self.interim_sent = self.framed
            return True  # 100 Continue, 103 Early Hints: the response follows
        if self.framed and not self.pooled and not self._final_fits(rh.status):
            return False
        self.interim_sent = False
        self.reusable = rh.keep_alive
        if rh.body is Body.LENGTH:
            # the head and the body bytes already here go in one send: one segment
            k = min(rh.length, len(self.rbuf) - rh.size)
            self._send_head(rh, k)
            self.rleft = rh.length - k
            if self.rleft:
                self.rphase = R_LENGTH
                return True
            self._response_done()
            return True
        if rh.body is Body.CHUNKED:
            del self.rbuf[: rh.size]
            self.rchunk = ChunkedFraming()
            self.rphase = R_CHUNKED
            return self._pass_chunks(rh.raw)
        self._send_head(rh, 0)
        if rh.body is Body.NONE:
            self._response_done()
            return True
        if rh.status == 101:  # asked for (framed), or not: a tunnel is what it is
            self.state = TUNNEL
            self.ctx.reactor.soon(self._resume)
        self._go_blind()
        return False

    def _send_head(self, rh: ResponseHead, body: int) -> None:
        """Send the head and the ``body`` bytes after it in ``rbuf``, in one write, and
        drop them from ``rbuf``. Unless the head was rewritten (a pooled exchange), it
        is the VM's bytes as they came: sent from ``rbuf`` itself, with no copy when
        they are all it holds (one answer per read, the usual case)."""
        down = self.down
        assert down is not None
        rbuf = self.rbuf
        n = rh.size + body
        if self.pooled:
            down.write(rh.raw + rbuf[rh.size : n])
        elif n == len(rbuf):
            down.write(rbuf)  # a blocked write keeps a copy
            rbuf.clear()
            return
        else:
            down.write(rbuf[:n])
        del rbuf[:n]

    def _final_fits(self, status: int) -> bool:
        """Framed: may this final answer's status answer the request it is owed to? A 101
        only answers the Upgrade request the client waits on (the last one sent); to
        any other it would make a tunnel of the connection, and the client's next
        requests, for any host, would go to this VM unrouted: 502 instead."""
        upgrade = self.state == WAIT_UPGRADE and not self.asked
        if status == 101 and not upgrade:
            self._bad_answer("The shed switched protocols for a request that asked for no upgrade.")
            return False
        if upgrade and status != 101:
            self.state = READ_HEAD  # the Upgrade was declined: read on
            self.ctx.reactor.soon(self._resume)
        return True

    def _go_blind(self) -> None:
        """Relay the rest as it comes, to the VM's close; the upstream is not kept."""
        self.rphase = R_BLIND
        self.reusable = False
        if self.rbuf:
            assert self.down is not None
            self.down.write(bytes(self.rbuf))
            self.rbuf.clear()
        Relay.upstream_readable(self)

    def _response_cut(self) -> None:
        """The VM closed in the middle of the body: the client sees it end the same way."""
        self.rphase = R_BLIND
        self.reusable = False
        self.on_upstream_eof()

    def _response_done(self) -> None:
        """The response has ended: park the upstream if it is clean, then close the client.
        Framed keep-alive: on to the next answer owed."""
        if not self.pooled:
            self._next_answer()
            return
        self.rphase = R_BLIND
        flow = self.up_flow
        clean = (
            self.reusable
            and not self.rbuf
            and self.state == RESPONSE
            and not self.client_done
            and flow is not None
            and flow.idle
            and not flow.shut
        )
        self.rbuf.clear()  # bytes after the response were asked for by nobody
        if clean:
            self.park_upstream(self.udrained)
        else:
            self.drop_upstream()
        self.state = CLOSING
        down = self.down
        assert down is not None
        if down.blocked:
            down.finish()  # the FIN follows the queued bytes; then linger as after a page
        else:
            self._close_after_response()

    def _next_answer(self) -> None:
        """Framed keep-alive: the answer to the next request sent, if one was; else
        nothing is owed (``R_IDLE``) and the ``rbuf`` loop sees whatever comes early."""
        if self.asked:
            self.rphase = R_HEAD
            self.head_request = self.asked.pop(0)
        else:
            self.rphase = R_IDLE

    def _expect(self, head_request: bool) -> None:
        """Framed: a request has gone to the VM; its answer is owed after the others."""
        if self.rphase == R_IDLE:
            self.rphase = R_HEAD
            self.head_request = head_request
        elif self.rphase != R_BLIND:  # blind: a response whose end is the VM's close
            self.asked.append(head_request)

    def _unsolicited(self) -> None:
        """The VM sent bytes no request asked for. Passed on, they would be taken for the
        answer to the client's next request, maybe one for another shed: dropped, and
        the connection ended, as a client would end an idle one that did this."""
        self.rbuf.clear()
        self.outcome = "UNSOLICITED_RESPONSE"
        self._hang_up()

    def _close_after_response(self) -> None:
        """Close now when the client sent nothing more: the kernel sends the tail and a FIN.

        Saves the shutdown, a wake-up and a read against waiting for the client's own
        FIN. Unread client bytes would turn the close into a RST that can destroy the
        response in flight, so then the FIN goes first and we linger.
        """
        if not unread(self.cfd):
            self.close()
            return
        data = self.client.recv(_READ)
        self.lingered = len(data)
        assert self.down is not None
        self.down.finish()
        self._start_linger()

    def _redial(self) -> None:
        """A reused upstream was closed by the VM before it answered: send on a fresh one."""
        assert self.replay is not None
        self.next, self.head, body = self.replay
        self.replay = None
        self.inbuf.clear()  # nothing after a close request is sent on
        self.inbuf += body
        self.rbuf.clear()
        self.ctx.upstreams.stale += 1
        self.drop_upstream()
        self.up_done = False
        self.rphase = R_HEAD
        self.state = ROUTING
        self.open_upstream(self.next[1])

    def _read_after_close(self) -> None:
        """The client after its last request: a FIN is passed on; bytes are dropped."""
        while True:
            try:
                data = self.client.recv(_READ)
            except BlockingIOError:
                return
            if not data:
                self.reusable = False
                self.on_client_eof()
                return

    def _resume(self) -> None:
        if not self.closed:
            # a synthetic event: claim a hang-up so reads go on to EAGAIN or EOF
            self.on_event(self.cfd, select.EPOLLIN | select.EPOLLRDHUP)

    # -- failures ------------------------------------------------------------------

    def on_head_timeout(self) -> None:
        if self.state == READ_HEAD and not self.closed and (not self.served or self.inbuf):
            self.fail(ProtocolError("the request head did not arrive in time", code="HEAD_TIMEOUT"))

    def fail(self, err: SpliceError) -> None:
        """Answer the current request with an error page, then close (lingering)."""
        self._fail_with(err, ())

    def _fail_with(self, err: SpliceError, headers: tuple[tuple[str, str], ...]) -> None:
        if self.closed or self.state == CLOSING or self.pending_error is not None:
            return
        self.outcome = err.code
        if (
            self.up is not None
            and self.state in (ROUTING, READ_HEAD, BODY, CHUNKED)
            and not self.connecting
            and self.handshake is None
        ):
            # earlier requests may still be answered on the open upstream: let those
            # answers reach the client first (a retire), then send the page. A body
            # that broke its framing stops where it broke; the VM sees its end there.
            # An upstream still connecting, or still in its Connect API handshake, has
            # been sent no request: it owes no answer
            self.pending_error = (err, headers)
            self.failed_sent = self.state in (BODY, CHUNKED)
            self.state = ROUTING
            if not self.retiring:
                self._retire()
            return
        self._send_page(err, headers)

    def _bad_answer(self, message: str) -> None:
        """Framed: the VM's answer has a head splice cannot frame. Relayed blind,
        whatever followed it would pass for the next answers: this request gets a 502
        (nothing of its answer was sent yet) and the connection ends."""
        assert self.key is not None
        self.rbuf.clear()
        self.rphase = R_BLIND
        err = BackendError(message, code="BAD_RESPONSE", shed=self.key[0], port=self.key[1])
        self.outcome = err.code
        self._send_page(err, ())

    def _send_page(self, err: SpliceError, headers: tuple[tuple[str, str], ...]) -> None:
        head = self.head
        host = head.host.decode("ascii", "replace") if head is not None and head.host else ""
        page = render_error(
            err,
            as_json=head is not None and head.wants_json,
            link_host=host.split(".", 1)[1] if "." in host else None,
            retry_after=RETRY_AFTER.get(err.code),
            headers=headers,
        )
        self.drop_upstream()
        if self.down is None:
            self.down = Flow(self.client, self.client, self.ctx.pool, self.ctx.reactor.arm)
        self.down.write(page)
        self._hang_up()

    def _hang_up(self) -> None:
        """Drop the upstream; the client gets what is queued for it, a FIN, and we linger."""
        self.drop_upstream()
        self.retiring = False
        self.state = CLOSING
        out = self.down
        assert out is not None
        out.finish()
        if not out.blocked:
            self._start_linger()

    def _start_linger(self) -> None:
        """Keep reading (and dropping) client bytes so the page is not lost to a RST."""
        self.ctx.linger_deadlines.add(self, self.ctx.loop.time())
        self._linger_read()

    def _linger_read(self) -> None:
        if self.down is not None and self.down.blocked:
            return
        while self.lingered < _LINGER_BYTES:
            try:
                data = self.client.recv(_READ)
            except BlockingIOError:
                return
            except OSError:
                break
            if not data:
                break
            self.lingered += len(data)
        self.close()

    def on_linger_timeout(self) -> None:
        self.close()


def _skip_empty_lines(buf: bytearray) -> bool:
    """Drop the empty lines (CRLF or LF) that start ``buf``; True if there were any.
    RFC 9112 §2.2 has a server ignore them before a request line (a client's CRLF after
    a body it framed itself)."""
    size = len(buf)
    while buf[:2] == b"\r\n" or buf[:1] == b"\n":
        del buf[: 2 if buf[0] == 13 else 1]
    return len(buf) != size
