"""One request through the store: replay a hit, or forward it (and maybe record it).

``answer`` applies the mode: replay modes try the store first (a hit is streamed from
its blob with an exact Content-Length and ``X-Splice-Replay: hit``); ``replay`` turns
a miss into 504 REPLAY_MISS; recording modes fetch once per key at a time (single
flight: concurrent identical requests wait, then replay what the first recorded). A
recorded body is written to the blob as it is relayed; the last chunk is held back
until the entry commits, so a client holding the whole response can replay it at once.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import sqlite3
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import h11

from splice.accesslog import AccessLog
from splice.errors import BackendError
from splice.store.blobs import BlobWriter
from splice.store.fetch import Incoming, Upstreams, end_to_end, response_body
from splice.store.h11io import READ_SIZE, HttpStream
from splice.store.index import Entry
from splice.store.keys import key_material, key_of
from splice.store.runtime import Credentials, StoreRuntime

#: (host, port, client_ip, user) -> the address to dial; raises SpliceError
AddressGate = Callable[[str, int, str, str | None], Awaitable[str]]
#: (host, port, client_ip, user) -> None; the name-level policy only (no DNS, no dial)
NameGate = Callable[[str, int, str, str | None], None]
#: (host, port, address recorded or None, client_ip, user) -> None: may this user have
#: what was fetched from that address (the policy's address rules, as a dial's)
ReplayGate = Callable[[str, int, str | None, str, str | None], None]
#: the users table in force now (a reload may change it while a connection is open)
UsersNow = Callable[[], Mapping[str, str] | None]
Fields = list[tuple[bytes, bytes]]
log = logging.getLogger("splice.store")
#: answers to Range / If-None-Match / If-Match style requests (206, 304, 412, 416): they
#: depend on fields the key usually leaves out; replayed to a plain GET they would break
#: the client, and stored they would replace the full answer recorded before
UNRECORDED = frozenset({206, 304, 412, 416})


@dataclass(slots=True)
class Client:
    """One client connection and what its requests need."""

    stream: HttpStream
    rt: StoreRuntime
    upstreams: Upstreams
    policy_gate: AddressGate
    client_ip: str
    name_gate: NameGate | None = None
    #: checks a hit before it is replayed; None: the name gate alone
    replay_gate: ReplayGate | None = None
    #: the users table in force, read at each request (a reload may change it)
    users_now: UsersNow = lambda: None
    user: str | None = None
    #: the Proxy-Authorization value that proved ``user`` (scrypt once per connection),
    #: and the users table it was proved against
    proved: bytes | None = None
    proved_in: Mapping[str, str] | None = None
    accept: bytes | None = None
    timeout: float = 600.0
    #: a request head must come whole in this long (408 HEAD_TIMEOUT), as in the engine
    #: (``serve_forward_stream`` passes it; 10 s is ``config.HEAD_TIMEOUT``)
    head_timeout: float = 10.0
    connect_timeout: float = 5.0
    #: the client went away while a recording it started was still being fetched
    gone: bool = False
    #: where each request's line goes (None: access_log = false), and the listener mode
    access: AccessLog | None = None
    mode: str = "forward"

    async def deliver_head(self, head: h11.Response) -> None:
        """The response head, during a recording (which outlives the client)."""
        try:
            await self.stream.send(head)
        except (ConnectionError, TimeoutError):  # hung up, or stopped reading
            self.gone = True

    async def deliver(self, data: bytes, *, recording: bool) -> None:
        """Body bytes to the client; a recording outlives a client that hung up."""
        if self.gone:
            return
        try:
            await self.stream.send(h11.Data(data=data))
        except (ConnectionError, TimeoutError, h11.LocalProtocolError):
            if not recording:
                raise
            self.gone = True  # stopped reading for ``timeout``: as good as gone


def has_body(method: str, status: int) -> bool:
    return not (method == "HEAD" or status in (204, 304) or 100 <= status < 200)


async def answer(cx: Client, inc: Incoming) -> str:
    """Reply to ``inc`` per the store mode: HIT, RECORDED or FORWARDED (for the access
    line). Raises SpliceError (REPLAY_MISS...)."""
    s = cx.rt.settings
    material = key_material(
        s.match, method=inc.method, url=inc.url, body_sha256=inc.body_sha256, headers=inc.headers
    )
    key = inc.key = key_of(material)
    if s.replays and await replay(cx, inc, key):
        return "HIT"
    if s.mode == "replay":
        raise BackendError(
            f"Nothing is recorded for {inc.method} {inc.url} (key {key}).", code="REPLAY_MISS"
        )
    if s.records:
        return await record(cx, inc, key, material)
    return await forward(cx, inc, None)


def replay_fields(e: Entry, method: str) -> Fields:
    """The recorded fields, with an exact Content-Length for a body, and the hit marker."""
    fields = [(n.encode("latin-1"), v.encode("latin-1")) for n, v in e.headers]
    if has_body(method, e.status):
        length = (b"Content-Length", str(e.size).encode())
        at = next((i for i, (n, _) in enumerate(fields) if n.lower() == b"content-length"), None)
        fields = [f for f in fields if f[0].lower() != b"content-length"]
        fields.insert(len(fields) if at is None else at, length)
    fields.append((b"X-Splice-Replay", b"hit"))
    return fields


async def replay(cx: Client, inc: Incoming, key: str, only: Entry | None = None) -> bool:
    """Serve ``key`` from the store if it is there (pinned while it streams); with
    ``only``, if what is there is that recording (the same ``recorded_at``)."""
    rep = await cx.rt.open_replay(key)
    if rep is None:
        return False
    try:
        e = rep.entry
        if only is not None and e.recorded_at != only.recorded_at:
            return False
        if e.request.get("credentials", "") != credential_digest(inc):
            return False  # another user's answer, or one made with other credentials
        if cx.replay_gate is not None:  # raises: refused as a dial would be
            cx.replay_gate(inc.host, inc.port, e.request.get("address"), cx.client_ip, cx.user)
        reason = e.reason.encode("latin-1")
        fields = replay_fields(e, inc.method)
        head = h11.Response(status_code=e.status, headers=fields, reason=reason)
        body = has_body(inc.method, e.status)
        if rep.file is None:  # a small body, read already: the response in one write
            assert rep.body is not None
            data = [h11.Data(data=rep.body)] if body and rep.body else []
            await cx.stream.send_all([head, *data, h11.EndOfMessage()])
        else:
            await cx.stream.send(head)
            if body:
                while chunk := rep.file.read(READ_SIZE):
                    await cx.stream.send(h11.Data(data=chunk))
            await cx.stream.send(h11.EndOfMessage())
    finally:
        cx.rt.close_replay(rep)
    return True


#: fields that make an answer one user's: requests merged into one recording must
#: bear the same ones (the key leaves them out; Proxy-Authorization never goes upstream)
CREDENTIAL_FIELDS = frozenset({b"authorization", b"cookie"})


def credentials(inc: Incoming) -> Credentials:
    """The request's credential-bearing fields, byte for byte and in order."""
    return tuple((n.lower(), v) for n, v in inc.headers if n.lower() in CREDENTIAL_FIELDS)


def credential_digest(inc: Incoming) -> str:
    """What a recording keeps of the credentials it was made with, and a replay must
    match: "" for none, else their SHA-256 (a field holds no NUL)."""
    creds = credentials(inc)
    if not creds:
        return ""
    return hashlib.sha256(b"\0".join(n + b"\0" + v for n, v in creds)).hexdigest()


async def record(cx: Client, inc: Incoming, key: str, material: dict[str, Any]) -> str:
    """Fetch and record, once per key and credentials at a time; latecomers with the
    same credentials replay that recording (only that one: an entry another user's
    recording stored meanwhile is not theirs). A latecomer waits at most ``timeout``
    (a stalled leader must not hold every identical request), then fetches on its own
    without recording."""
    flights = cx.rt.flights
    ident = (key, credentials(inc))
    for _ in range(2):  # a failed leader leaves nothing to replay: then lead, once
        flight = flights.get(ident)
        if flight is None:
            break
        try:
            stored = await asyncio.wait_for(asyncio.shield(flight), cx.timeout)
        except TimeoutError:
            return await forward(cx, inc, None)
        if stored is None:
            continue
        if await replay(cx, inc, key, stored):
            return "HIT"
        return await forward(cx, inc, None)  # replaced or evicted meanwhile
    done: asyncio.Future[Entry | None] = asyncio.get_running_loop().create_future()
    flights[ident] = done
    stored = None
    try:
        outcome, stored = await _forward(cx, inc, (key, material))
        return outcome
    finally:
        if flights.get(ident) is done:
            del flights[ident]
        done.set_result(stored)


async def forward(cx: Client, inc: Incoming, rec: tuple[str, dict[str, Any]] | None) -> str:
    """Dial (after the policy), relay the response, and record it when ``rec`` is given
    (and its status is one worth keeping): RECORDED or FORWARDED."""
    return (await _forward(cx, inc, rec))[0]


async def _forward(
    cx: Client, inc: Incoming, rec: tuple[str, dict[str, Any]] | None
) -> tuple[str, Entry | None]:
    """``forward``, and the entry stored (None: nothing was)."""
    addr = await cx.policy_gate(inc.host, inc.port, cx.client_ip, cx.user)
    up, resp = await cx.upstreams.fetch(inc, addr)
    keep = rec is not None and resp.status_code not in UNRECORDED
    writer = cx.rt.store.writer() if keep else None
    try:
        stored = await _relay(cx, inc, up, resp, writer, rec, addr)
    except BaseException:
        if writer is not None:
            writer.abort()
        await up.close()
        raise
    if cx.gone:
        await up.close()
        raise ConnectionResetError("the client went away during the recording")
    await cx.upstreams.release(up, inc, addr)
    return ("RECORDED" if stored else "FORWARDED"), stored


async def _relay(
    cx: Client,
    inc: Incoming,
    up: HttpStream,
    resp: h11.Response,
    writer: BlobWriter | None,
    rec: tuple[str, dict[str, Any]] | None,
    addr: str,
) -> Entry | None:
    """Relay the response; when recording, the head waits for the first body byte and
    the last chunk for the commit, so a client that has it all finds it stored. The
    entry stored, if any: a store that fails (a full disk) ends the recording, never
    the relay."""
    fields = end_to_end(list(resp.headers.raw_items()))
    head = h11.Response(status_code=resp.status_code, headers=fields, reason=resp.reason)
    recording = writer is not None
    if not recording:
        await cx.stream.send(head)
    pending = b""
    async for chunk in response_body(up, cx.timeout):
        if writer is not None:
            try:
                writer.write(chunk)
            except OSError as e:  # the writer aborted itself: relay on, unrecorded
                _stopped(writer, e)
                writer = None
        if cx.gone and writer is None:  # nothing to record for, no one to relay to
            raise ConnectionResetError("the client went away")
        if pending:
            await cx.deliver(pending, recording=writer is not None)
        elif recording and cx.stream.conn.our_state is h11.SEND_RESPONSE:
            await cx.deliver_head(head)
        pending = chunk
    stored = None
    if writer is not None and rec is not None and not writer.failed:
        entry = _entry(inc, resp, fields, addr, *rec)
        try:
            await cx.rt.commit(writer, entry)
            stored = entry
        except (OSError, sqlite3.Error) as e:  # the commit job aborted the writer
            _stopped(writer, e)
    if cx.stream.conn.our_state is h11.SEND_RESPONSE:
        await cx.deliver_head(head)
    if pending:
        await cx.deliver(pending, recording=recording)
    if not cx.gone:
        await cx.stream.send(h11.EndOfMessage())
    return stored


def _stopped(writer: BlobWriter, err: Exception) -> None:
    """One warning for a recording the store could not keep: the client is not told
    (it gets the origin's whole answer), so the log is where a full disk shows."""
    why = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
    log.warning("recording stopped, nothing stored: %s: %s", writer.tmp, why)


def _entry(
    inc: Incoming, resp: h11.Response, fields: Fields, addr: str, key: str, material: dict[str, Any]
) -> Entry:
    """The row of a recording: with the credentials it was made with and the address it
    came from, which a replay checks as the policy checks a dial."""
    now = time.time()
    return Entry(
        key=key,
        method=inc.method,
        url=inc.url,
        status=resp.status_code,
        reason=resp.reason.decode("latin-1"),
        headers=tuple((n.decode("latin-1"), v.decode("latin-1")) for n, v in fields),
        request={
            "match": material,
            "body_sha256": inc.body_sha256,
            "body_size": inc.body_size,
            "credentials": credential_digest(inc),
            "address": addr,
        },
        blob="",  # filled in by StoreRuntime.commit once the body is hashed
        size=0,
        recorded_at=now,
        used_at=now,
    )
