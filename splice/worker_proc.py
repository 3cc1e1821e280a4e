"""One worker process as the supervisor sees it: spawn, start, call, reap.

``spawn`` runs ``python -m splice [log flags] worker --control FD --index I`` in its
own session (a terminal's Ctrl-C reaches only the supervisor, which forwards it),
with one end of a socketpair as its control channel, then calls ``start`` with the
config, its index and the number of workers (for its share of the limits). ``reap``
waits for the process to exit, killing it past a deadline. ``last`` is the worker's
latest metrics snapshot, kept for the supervisor's sums.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import subprocess
import sys
import time
from typing import Any

from splice.control import Channel, ChannelClosed

log = logging.getLogger("splice")

#: how often a dying worker is checked for its exit
POLL_EVERY = 0.05


class WorkerProc:
    def __init__(self, index: int) -> None:
        self.index = index
        self.proc: subprocess.Popen[bytes] | None = None
        self.chan: Channel | None = None
        self.reader: asyncio.Task[None] | None = None
        self.pid = 0
        #: started and not yet seen exiting: calls may be made
        self.ready = False
        self.last: dict[str, Any] | None = None
        #: the supervisor's config generation this worker runs (``Supervisor.generation``)
        self.generation = 0
        #: its last run ended as a requested stop should (or was not asked to stop)
        self.clean = True
        #: the outcome of the first start: None, or why it failed
        self.first: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()

    def started(self, error: str | None) -> None:
        if not self.first.done():
            self.first.set_result(error)

    async def spawn(
        self, args: list[str], config: dict[str, Any], workers: int, timeout: float
    ) -> None:
        """Run ``python -m splice ARGS --control FD``, then its server (one of ``workers``).

        Raises:
            OSError, ChannelClosed, TimeoutError: it did not start (and is being stopped).
        """
        parent, child = socket.socketpair()
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "splice", *args, "--control", str(child.fileno())],
                pass_fds=(child.fileno(),),
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        except OSError:
            parent.close()
            raise
        finally:
            child.close()
        self.chan = await Channel.open(parent)
        self.reader = asyncio.get_running_loop().create_task(self.chan.read_replies())
        try:
            answer = await self.chan.call(
                "start", timeout, config=config, index=self.index, workers=workers
            )
        except (ChannelClosed, TimeoutError):
            self.terminate()
            raise
        self.pid, self.ready = answer["pid"], True

    async def call(self, op: str, timeout: float, **args: Any) -> Any:
        if self.chan is None:
            raise ChannelClosed("not running")
        return await self.chan.call(op, timeout, **args)

    def send(self, sig: signal.Signals) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(sig)

    @property
    def connected(self) -> bool:
        """Its channel is open: the process is there (its calls may still fail)."""
        return self.chan is not None and not self.chan.closed

    def terminate(self) -> None:
        self.send(signal.SIGTERM)

    def replace(self, within: float) -> None:
        """End a worker that failed a call, for its slot to start a new one: no calls from
        now on, SIGTERM, and SIGKILL if it still runs ``within`` s later (a hung worker
        may never get to its SIGTERM handler)."""
        self.ready = False
        self.terminate()
        proc = self.proc

        def kill() -> None:
            if proc is not None and proc.poll() is None:
                log.warning("worker %d (pid %d) did not exit; killing it", self.index, proc.pid)
                proc.kill()

        asyncio.get_running_loop().call_later(within, kill)

    async def reap(self, within: float) -> str:
        """Wait up to ``within`` s for the exit (then SIGKILL); how it exited."""
        self.ready = False
        if self.chan is not None:
            self.chan.close()
        proc = self.proc
        if proc is None:
            return "never started"
        deadline = time.monotonic() + within
        while proc.poll() is None and time.monotonic() < deadline:
            await asyncio.sleep(POLL_EVERY)
        if proc.poll() is None:
            log.warning("worker %d (pid %d) did not exit; killing it", self.index, proc.pid)
            proc.kill()
        while proc.poll() is None:  # SIGKILL cannot be refused; this ends at once
            await asyncio.sleep(POLL_EVERY)
        code = proc.returncode
        return f"pid {proc.pid}, " + (f"signal {-code}" if code < 0 else f"status {code}")
