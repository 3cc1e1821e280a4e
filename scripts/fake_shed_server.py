"""A faithful loopback fake of shed-server's HTTP API, for tests and local runs.

``GET /api/info``, ``/api/sheds``, ``/api/sheds/{name}`` (shed-server's JSON: empty fields
omitted, errors as ``{"error": {"code", "message"}}``) and the Connect API (``Upgrade:
shed-tcp`` -> 101, then a relay to ``ip_address:port``; 400/404/503/502 as documented).
Controls: add/remove sheds, set status, ``delay``, ``fail`` ("500", "drop", "garbage"),
counters, ``drop_connections()``; in-process on an ephemeral 127.0.0.1 port, or run
``python scripts/fake_shed_server.py --port 8080 --shed alpha=127.0.0.1``."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import signal
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from http import HTTPStatus
from typing import Any, NamedTuple, cast

import h11

#: shed-server's ValidateShedName grammar
SHED_NAME = re.compile(r"[a-z](?:[a-z0-9-]{0,61}[a-z0-9])?")
#: relay read size
CHUNK = 64 * 1024
#: content types as shed-server (Go) sends them: JSON for API answers, text for mux errors
_JSON, _TEXT = "application/json", "text/plain; charset=utf-8"
#: the routes; a name is one path segment, validated by the handler as shed-server does
_SHED_PATH = re.compile(r"/api/sheds/([^/]+)(?:/connect/([^/]*))?")


@dataclass
class FakeShed:
    name: str  # fields in shed-server's JSON order
    status: str = "running"
    created_at: str = "2026-01-20T10:30:00Z"
    repo: str = ""
    backend: str = "firecracker"
    ip_address: str = ""
    cpus: int = 0
    memory_mb: int = 0
    #: where the Connect API dials when there is no ip_address (a vz shed via vsock)
    dial_host: str = ""

    def to_json(self) -> dict[str, object]:
        """shed-server's Shed object: empty and zero fields are omitted."""
        return {k: v for k, v in asdict(self).items() if k != "dial_host" and v not in ("", 0)}


def _json(doc: object) -> bytes:
    return (json.dumps(doc, separators=(",", ":")) + "\n").encode()  # as Go's json.Encoder


def _error(code: str, message: str) -> bytes:  # shed-server's APIError
    return _json({"error": {"code": code, "message": message}})


class FakeShedServer:
    def __init__(
        self, sheds: Iterable[FakeShed] = (), *, port: int = 0, name: str = "mini-desktop"
    ) -> None:
        self.sheds: dict[str, FakeShed] = {s.name: s for s in sheds}
        self.name = name
        #: seconds to wait before each answer (a slow shed-server)
        self.delay = 0.0
        #: None, "500" (INTERNAL_ERROR), "drop" (close, no answer), "garbage" (bad JSON)
        self.fail: str | None = None
        self.connect_timeout = 5.0
        #: HTTP requests and TCP connections seen, and requests per path
        self.requests = self.connections = 0
        self.paths: Counter[str] = Counter()
        self._want_port = port
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self._want_port)

    async def stop(self) -> None:
        assert self._server is not None, "not started"
        self._server.close()
        await self.drop_connections()
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def __aenter__(self) -> FakeShedServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def port(self) -> int:
        assert self._server is not None, "not started"
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def add_shed(
        self, name: str, ip_address: str = "", status: str = "running", **fields: Any
    ) -> FakeShed:
        shed = FakeShed(name, status=status, ip_address=ip_address, **fields)
        self.sheds[name] = shed
        return shed

    def remove_shed(self, name: str) -> None:
        self.sheds.pop(name, None)

    def set_status(self, name: str, status: str) -> None:
        self.sheds[name].status = status

    async def drop_connections(self) -> None:
        """Close every open client connection (an idle timeout, a restart)."""
        for w in list(self._writers):
            w.close()
        await asyncio.sleep(0)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = cast("asyncio.Task[None]", asyncio.current_task())
        self._tasks.add(task)
        self._writers.add(writer)
        self.connections += 1
        peer = _Peer(h11.Connection(h11.SERVER), reader, writer)
        try:
            while await self._one_request(peer):
                peer.http.start_next_cycle()
        except (OSError, h11.ProtocolError, asyncio.CancelledError):
            pass  # swallowing the stop() cancel spares 3.11's streams a logged traceback
        finally:
            self._writers.discard(writer)
            self._tasks.discard(task)
            writer.close()

    async def _one_request(self, peer: _Peer) -> bool:
        """Serve one request; True when the connection may carry another."""
        req = await peer.read_request()
        if req is None:
            return False
        target = req.target.decode("latin-1").partition("?")[0]
        self.requests += 1
        self.paths[target] += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.fail == "drop":
            return False
        if self.fail == "500":
            await peer.send(500, _error("INTERNAL_ERROR", "injected failure"))
        elif self.fail == "garbage":
            await peer.send(200, b'{"name": "trunc')
        elif (m := _SHED_PATH.fullmatch(target)) and m[2] is not None and req.method == b"GET":
            return await self._connect(peer, req, m[1], m[2])
        else:
            await peer.send(*self._route(req.method, target))
        return peer.reusable()

    def _route(self, method: bytes, target: str) -> tuple[int, bytes, str]:
        known = target in ("/api/info", "/api/sheds") or _SHED_PATH.fullmatch(target)
        if not known:
            return 404, b"404 page not found\n", _TEXT  # what Go's ServeMux answers
        if method != b"GET":
            return 405, b"Method Not Allowed\n", _TEXT
        if target == "/api/info":
            info = {"name": self.name, "version": "1.0.0", "ssh_port": 2222,
                    "http_port": 8080, "backend": "firecracker"}  # fmt: skip
            return 200, _json(info), _JSON
        if target == "/api/sheds":
            sheds = [s.to_json() for s in sorted(self.sheds.values(), key=lambda s: s.name)]
            return 200, _json({"sheds": sheds}), _JSON
        name = target.rpartition("/")[2]
        shed = self.sheds.get(name)
        if shed is None:
            return 404, _error("SHED_NOT_FOUND", f"Shed '{name}' not found"), _JSON
        return 200, _json(shed.to_json()), _JSON

    async def _connect(self, peer: _Peer, req: h11.Request, name: str, port_s: str) -> bool:
        refusal, host = self._connect_check(req, name, port_s)
        if refusal is None:
            try:
                dial = asyncio.open_connection(host, int(port_s))
                t_reader, t_writer = await asyncio.wait_for(dial, self.connect_timeout)
            except (OSError, TimeoutError):
                refusal = 502, _error("CONNECT_FAILED", f"dial {name!r} port {port_s} failed")
        if refusal is not None:
            await peer.send(*refusal)
            return peer.reusable()
        hs = [("Upgrade", "shed-tcp"), ("Connection", "Upgrade")]
        switch = h11.InformationalResponse(
            status_code=101, headers=hs, reason="Switching Protocols"
        )
        peer.writer.write(peer.http.send(switch))
        t_writer.write(peer.http.trailing_data[0])  # bytes the client sent after its head
        self._writers.add(t_writer)
        try:
            await asyncio.gather(_pipe(peer.reader, t_writer), _pipe(t_reader, peer.writer))
        finally:
            self._writers.discard(t_writer)
            t_writer.close()
        return False

    def _connect_check(
        self, req: h11.Request, name: str, port_s: str
    ) -> tuple[tuple[int, bytes] | None, str]:
        """(refusal (status, body) or None, host to dial), in shed-server's order."""
        if dict(req.headers).get(b"upgrade", b"").lower() != b"shed-tcp":
            return (400, _error("INVALID_REQUEST", "Upgrade: shed-tcp required")), ""
        if SHED_NAME.fullmatch(name) is None:
            return (400, _error("INVALID_SHED_NAME", f"invalid shed name {name!r}")), ""
        if not port_s.isdigit() or not 1 <= int(port_s) <= 65535:
            return (400, _error("INVALID_PORT", "Port must be 1-65535")), ""
        shed = self.sheds.get(name)
        if shed is None:
            return (404, _error("SHED_NOT_FOUND", f"Shed '{name}' not found")), ""
        if shed.status != "running":
            return (503, _error("SHED_NOT_RUNNING", f"shed {name!r} is not running")), ""
        host = shed.dial_host or shed.ip_address
        if not host:
            return (502, _error("CONNECT_FAILED", f"shed {name!r} has no address")), ""
        return None, host


class _Peer(NamedTuple):
    """One client connection: its h11 state and its streams."""

    http: h11.Connection
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter

    async def read_request(self) -> h11.Request | None:
        req: h11.Request | None = None
        while True:
            event = self.http.next_event()
            if event is h11.NEED_DATA:
                self.http.receive_data(await self.reader.read(CHUNK))
            elif isinstance(event, h11.Request):
                req = event
            elif isinstance(event, h11.EndOfMessage) or event is h11.PAUSED:
                return req
            elif isinstance(event, h11.ConnectionClosed):
                return None

    async def send(self, status: int, body: bytes, ctype: str = "application/json") -> None:
        headers = [("Content-Type", ctype), ("Content-Length", str(len(body)))]
        reason = HTTPStatus(status).phrase  # Go always sends one; h11 would leave it empty
        out = self.http.send(h11.Response(status_code=status, headers=headers, reason=reason))
        out += self.http.send(h11.Data(data=body)) + self.http.send(h11.EndOfMessage())
        self.writer.write(out)
        await self.writer.drain()

    def reusable(self) -> bool:
        return self.http.our_state is h11.DONE and self.http.their_state is h11.DONE


async def _pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError):
        while data := await src.read(CHUNK):
            dst.write(data)
            await dst.drain()
        if dst.can_write_eof():
            dst.write_eof()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Fake shed-server on 127.0.0.1")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--shed", action="append", default=[], metavar="NAME=IP",
                   help="a running shed; no IP: reachable only via Connect")  # fmt: skip
    p.add_argument("--status", action="append", default=[], metavar="NAME=STATUS")
    p.add_argument("--delay", type=float, default=0.0, help="seconds before each answer")
    args = p.parse_args(argv)
    server = FakeShedServer(port=args.port)
    server.delay = args.delay
    for name, _, ip in (spec.partition("=") for spec in args.shed):
        server.add_shed(name, ip_address=ip, dial_host="" if ip else "127.0.0.1")
    for name, _, status in (spec.partition("=") for spec in args.status):
        server.set_status(name, status)
    asyncio.run(_serve_until_signal(server))


async def _serve_until_signal(server: FakeShedServer) -> None:
    done = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(sig, done.set)
    async with server:
        print(f"fake shed-server on {server.base_url}", flush=True)
        await done.wait()


if __name__ == "__main__":
    main()
