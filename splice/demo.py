"""``splice demo``: two demo sheds on loopback and splice in front of them.

The sheds are in-process asyncio servers on their own loopback addresses (Linux
routes all of 127.0.0.0/8 locally), so the usual ports (8080, 3000) cannot clash
with anything already listening on 127.0.0.1:
- alpha (127.0.0.2): an HTTP app on 8080 that names itself and echoes the request,
  and a WebSocket echo on 9000;
- beta (127.0.0.3): the same HTTP app on 8080 and on 3000.
splice runs in this process too, as one worker (``workers = 1``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import sys

import h11

from splice.config import parse_config
from splice.errors import ConfigError

log = logging.getLogger("splice")

DOMAIN = "demo.localhost"
ALPHA, BETA = "127.0.0.2", "127.0.0.3"


def demo_config(port: int) -> dict[str, object]:
    return {
        "domains": [DOMAIN],
        "default_port": 8080,
        # one in-process server, no supervisor (and no SO_REUSEPORT on its port)
        "workers": 1,
        "listen": [{"address": f"127.0.0.1:{port}", "mode": "http"}],
        "sheds": {
            "alpha": {
                "address": ALPHA,
                "ports": [{"port": 8080, "label": "web"}, {"port": 9000, "label": "ws-echo"}],
            },
            "beta": {"address": BETA, "ports": [{"port": 8080}, {"port": 3000, "label": "dev"}]},
        },
    }


async def serve_app(shed: str, host: str, port: int) -> asyncio.Server:
    """An HTTP/1.1 app that says which shed and port answered and echoes the request."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = h11.Connection(h11.SERVER)
        try:
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    data = await reader.read(65536)
                    conn.receive_data(data)
                    if not data and conn.their_state is not h11.DONE:
                        break
                    continue
                if isinstance(event, h11.Request):
                    body = await _read_body(conn, reader)
                    await _answer(conn, writer, shed, port, event, body)
                    if conn.our_state is h11.MUST_CLOSE:
                        break
                    conn.start_next_cycle()
                elif isinstance(event, h11.ConnectionClosed):
                    break
        except (h11.ProtocolError, ConnectionError):
            pass
        finally:
            writer.close()

    return await asyncio.start_server(handle, host, port)


async def _read_body(conn: h11.Connection, reader: asyncio.StreamReader) -> bytes:
    body = bytearray()
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(await reader.read(65536))
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.EndOfMessage):
            return bytes(body)
        else:
            raise h11.RemoteProtocolError("unexpected event")


async def _answer(
    conn: h11.Connection,
    writer: asyncio.StreamWriter,
    shed: str,
    port: int,
    req: h11.Request,
    body: bytes,
) -> None:
    echo = {
        "shed": shed,
        "port": port,
        "method": req.method.decode(),
        "target": req.target.decode(),
        "headers": [[n.decode(), v.decode("latin-1")] for n, v in req.headers.raw_items()],
        "body_bytes": len(body),
    }
    text = f"Hello from shed {shed}, port {port}.\n" + json.dumps(echo, indent=2) + "\n"
    data = text.encode()
    headers = [("content-type", "text/plain; charset=utf-8"), ("content-length", str(len(data)))]
    writer.write(conn.send(h11.Response(status_code=200, headers=headers)))
    writer.write(conn.send(h11.Data(data=data)))
    writer.write(conn.send(h11.EndOfMessage()))
    await writer.drain()


async def serve_ws_echo(host: str, port: int) -> asyncio.Server:
    """A WebSocket echo server (wsproto): every message comes back unchanged."""
    from wsproto import ConnectionType, WSConnection
    from wsproto.events import (
        AcceptConnection,
        BytesMessage,
        CloseConnection,
        Ping,
        Request,
        TextMessage,
    )

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        ws = WSConnection(ConnectionType.SERVER)
        try:
            while True:
                data = await reader.read(65536)
                ws.receive_data(data or None)
                for event in ws.events():
                    if isinstance(event, Request):
                        writer.write(ws.send(AcceptConnection()))
                    elif isinstance(event, TextMessage | BytesMessage):
                        writer.write(ws.send(event))
                    elif isinstance(event, Ping):
                        writer.write(ws.send(event.response()))
                    elif isinstance(event, CloseConnection):
                        writer.write(ws.send(event.response()))
                        await writer.drain()
                        return
                await writer.drain()
                if not data:
                    return
        except Exception:
            return
        finally:
            writer.close()

    return await asyncio.start_server(handle, host, port)


def run_demo(port: int) -> int:
    import uvloop

    from splice.server import Server

    try:
        cfg = parse_config(demo_config(port))
    except ConfigError as e:  # --port out of range: the user's typo, not a crash
        print(f"splice: demo --port {port}: {e}", file=sys.stderr)
        return 2

    async def main() -> None:
        servers = [
            await serve_app("alpha", ALPHA, 8080),
            await serve_ws_echo(ALPHA, 9000),
            await serve_app("beta", BETA, 8080),
            await serve_app("beta", BETA, 3000),
        ]
        splicer = Server(cfg)
        await splicer.start()
        print(DEMO_TEXT.format(port=port, domain=DOMAIN), flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        await splicer.stop(1.0)
        for s in servers:
            s.close()

    try:
        uvloop.run(main())
    except OSError as e:  # the port (or a demo app's) is taken
        print(f"splice: demo: {e}", file=sys.stderr)
        return 1
    return 0


DEMO_TEXT = """\
splice demo: listening on 127.0.0.1:{port} for *.{domain}
  shed alpha: HTTP app on port 8080 (default), WebSocket echo on port 9000
  shed beta:  HTTP app on ports 8080 (default) and 3000

Try (curl sends *.localhost to loopback):
  curl http://alpha.{domain}:{port}/
  curl http://beta-3000.{domain}:{port}/
  curl http://3000-beta.{domain}:{port}/hello
  curl http://beta.{domain}:{port}/port/3000/hello
  curl -d 'some body' http://alpha.{domain}:{port}/echo
  curl -i http://alpha-7777.{domain}:{port}/      # 403 PORT_NOT_EXPOSED, lists the ports
  curl -i http://nosuch.{domain}:{port}/          # 404 SHED_NOT_FOUND
  curl -i -H 'Accept: application/json' http://nosuch.{domain}:{port}/
WebSocket echo: ws://alpha-9000.{domain}:{port}/

Ctrl-C stops."""
