"""WebSocket echo server: the "VM" side of the websocket scenario.

A bare asyncio Protocol on uvloop with its own RFC 6455 framing, because a
general library would make the backend, not the proxy, the bottleneck.
Echoes text/binary frames, answers ping with pong and close with close.

    python -m bench.ws_echo --port 9001
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import signal
import struct
from typing import cast

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
MAX_HEAD = 16384


def accept_key(key: bytes) -> bytes:
    return base64.b64encode(hashlib.sha1(key + GUID).digest())


def unmask(data: bytes, mask: bytes) -> bytes:
    """XOR the payload with the 4-byte key, as one big integer (fast in CPython)."""
    n = len(data)
    if n == 0:
        return data
    key = (mask * (n // 4 + 1))[:n]
    return (int.from_bytes(data, "little") ^ int.from_bytes(key, "little")).to_bytes(n, "little")


def frame_header(b0: int, n: int) -> bytes:
    if n < 126:
        return bytes((b0, n))
    if n < 65536:
        return struct.pack("!BBH", b0, 126, n)
    return struct.pack("!BBQ", b0, 127, n)


class Echo(asyncio.Protocol):
    def __init__(self) -> None:
        self.buf = bytearray()
        self.open = False
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if not self.open and not self._handshake():
            return
        self._frames()

    def _handshake(self) -> bool:
        assert self.transport is not None
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            if len(self.buf) > MAX_HEAD:
                self.transport.close()
            return False
        head = bytes(self.buf[:end]).split(b"\r\n")
        del self.buf[: end + 4]
        key = b""
        for line in head[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"sec-websocket-key":
                key = value.strip()
        if not key:
            self.transport.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
            self.transport.close()
            return False
        self.transport.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept_key(key) + b"\r\n\r\n"
        )
        self.open = True
        return True

    def _frames(self) -> None:
        assert self.transport is not None
        buf = self.buf
        pos = 0
        out = []
        while True:
            if len(buf) - pos < 2:
                break
            b0, b1 = buf[pos], buf[pos + 1]
            n = b1 & 0x7F
            hdr = 2
            if n == 126:
                if len(buf) - pos < 4:
                    break
                n = int.from_bytes(buf[pos + 2 : pos + 4], "big")
                hdr = 4
            elif n == 127:
                if len(buf) - pos < 10:
                    break
                n = int.from_bytes(buf[pos + 2 : pos + 10], "big")
                hdr = 10
            masked = b1 & 0x80
            if masked:
                hdr += 4
            if len(buf) - pos < hdr + n:
                break
            payload = bytes(buf[pos + hdr : pos + hdr + n])
            if masked:
                payload = unmask(payload, bytes(buf[pos + hdr - 4 : pos + hdr]))
            pos += hdr + n
            opcode = b0 & 0x0F
            if opcode == 0x9:  # ping -> pong
                out.append(frame_header(0x8A, n) + payload)
            elif opcode == 0x8:  # close -> close
                out.append(frame_header(0x88, n) + payload)
                self.transport.write(b"".join(out))
                self.transport.close()
                return
            elif opcode != 0xA:  # text, binary, continuation: echo as sent
                out.append(frame_header(b0 & 0x8F, n) + payload)
        del buf[:pos]
        if out:
            self.transport.write(b"".join(out))


async def serve(host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Echo, host, port, backlog=4096, reuse_address=True)
    stop: asyncio.Future[None] = loop.create_future()

    def on_signal() -> None:
        if not stop.done():
            stop.set_result(None)

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    async with server:
        await stop


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    args = ap.parse_args()
    try:
        import uvloop

        uvloop.run(serve(args.host, args.port))
    except ImportError:
        asyncio.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
