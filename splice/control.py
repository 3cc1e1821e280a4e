"""The supervisor <-> worker channel: one JSON object per line over a Unix socketpair.

The supervisor ``call``s (``{"id": 7, "op": "snapshot", "args": {...}}``); the worker
``serve``s, each request in its own task, and answers ``{"id": 7, "result": ...}`` or
``{"id": 7, "error": "..."}``. A call has a deadline; end of file (the peer died or
exited) fails every pending call with ``ChannelClosed`` and ends ``serve``, which is
how a worker notices its supervisor is gone and how the supervisor notices a death.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

log = logging.getLogger("splice.control")

#: a snapshot with 256 sheds is ~40 KiB and a config a few KiB; far above both
MAX_MESSAGE = 16 << 20

Handler = Callable[..., Awaitable[Any]]


class ChannelClosed(ConnectionError):
    """The other end is gone (or answered with an error: ``RemoteError``)."""


class RemoteError(ChannelClosed):
    """The other end answered the call with an error: it is there, and it said no."""


class Channel:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._next = 0
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.closed = False

    @classmethod
    async def open(cls, sock: socket.socket) -> Channel:
        reader, writer = await asyncio.open_unix_connection(sock=sock, limit=MAX_MESSAGE)
        return cls(reader, writer)

    async def call(self, op: str, timeout: float, **args: Any) -> Any:
        """Ask the other end; its result. Raises ChannelClosed or TimeoutError."""
        if self.closed:
            raise ChannelClosed("channel closed")
        self._next += 1
        rid = self._next
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[rid] = fut
        try:
            self._send({"id": rid, "op": op, "args": args})
            async with asyncio.timeout(timeout):
                return await fut
        finally:
            self._pending.pop(rid, None)

    async def read_replies(self) -> None:
        """Caller side: resolve calls until end of file, then fail the rest."""
        try:
            while (msg := await self._read()) is not None:
                fut = self._pending.get(msg.get("id", -1))
                if fut is None or fut.done():
                    continue  # answered after its caller gave up
                if "error" in msg:
                    fut.set_exception(RemoteError(str(msg["error"])))
                else:
                    fut.set_result(msg.get("result"))
        finally:
            self.close()

    async def serve(self, handlers: Mapping[str, Handler]) -> None:
        """Answering side: run each request's handler until end of file."""
        try:
            while (msg := await self._read()) is not None:
                task = asyncio.get_running_loop().create_task(self._answer(handlers, msg))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        finally:
            self.close()

    async def _answer(self, handlers: Mapping[str, Handler], msg: dict[str, Any]) -> None:
        rid, op = msg.get("id"), msg.get("op", "")
        handler = handlers.get(op)
        try:
            if handler is None:
                raise LookupError(f"unknown op {op!r}")
            reply: dict[str, Any] = {"id": rid, "result": await handler(**msg.get("args", {}))}
        except Exception as e:  # the caller gets the error; this process goes on
            reply = {"id": rid, "error": str(e) or type(e).__name__}
        with contextlib.suppress(ChannelClosed):  # the asker left; nobody to tell
            self._send(reply)

    async def _read(self) -> dict[str, Any] | None:
        try:
            line = await self._reader.readline()
        except (OSError, ValueError):  # reset, or a line over MAX_MESSAGE
            return None
        if not line:
            return None
        try:
            msg = json.loads(line)
        except ValueError:
            return {}
        return msg if isinstance(msg, dict) else {}

    def _send(self, msg: Mapping[str, Any]) -> None:
        if self.closed or self._writer.is_closing():
            raise ChannelClosed("channel closed")
        self._writer.write(json.dumps(msg).encode() + b"\n")

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(ChannelClosed("channel closed"))
        with contextlib.suppress(OSError, RuntimeError):
            self._writer.close()
