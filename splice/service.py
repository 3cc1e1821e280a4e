"""Running splice as one process (admin listener included) or as one supervised worker.

SIGTERM or SIGINT: stop accepting, drain for the grace period, close the rest, exit 0;
a second SIGINT exits 1 at once. SIGHUP (and ``POST /reload``) re-reads the config;
a refused config leaves the running one in place. A worker takes its config from the
supervisor over the control channel (``splice.control``), with its index and the number
of workers, and enforces its share of every connection limit (``share_limits``, at
start and at each reload); it answers its calls (start, snapshot, routes, ready,
reload) and stops when the channel closes (supervisor gone).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import signal
import socket
import sys
from collections.abc import Callable
from typing import Any

from splice import heap
from splice.admin import AdminServer, Backend
from splice.config import Config, fixed_at_start, load_config, parse_config
from splice.config_ops import share_limits
from splice.control import Channel
from splice.errors import ConfigError
from splice.health import readiness
from splice.routes import routes_doc
from splice.server import Server

log = logging.getLogger("splice")

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Stopper:
    """Signal handlers for one process: stop on SIGTERM/SIGINT, ``on_hup`` on SIGHUP."""

    def __init__(
        self,
        grace: Callable[[], float],
        on_hup: Callable[[], None],
        forward: Callable[[signal.Signals], None] | None = None,
    ) -> None:
        self.grace = grace
        self.forward = forward
        self.stop = asyncio.Event()
        self.interrupts = 0
        loop = asyncio.get_running_loop()
        for sig in STOP_SIGNALS:
            loop.add_signal_handler(sig, self._on_signal, sig)
        loop.add_signal_handler(signal.SIGHUP, on_hup)

    def _on_signal(self, sig: signal.Signals) -> None:
        if self.forward is not None:
            self.forward(sig)
        self.interrupts += 1
        if self.interrupts > 1 and sig == signal.SIGINT:
            log.warning("second interrupt: exiting now")
            raise SystemExit(1)
        log.info("%s: stopping (draining for up to %.0f s)", sig.name, self.grace())
        self.stop.set()

    def close(self) -> None:
        """Remove the handlers; the process is on its way out. A SIGTERM or SIGHUP from
        now on is ignored: with its default action, a second stop signal (a supervisor's
        and a service manager's, or one sent again) or a reload that came during the
        exit would kill the process and turn its clean exit into a death by signal
        (-15: a supervisor counts that worker as failed and exits 1)."""
        loop = asyncio.get_running_loop()
        for sig in (*STOP_SIGNALS, signal.SIGHUP):
            loop.remove_signal_handler(sig)
        for sig in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)


async def start_admin(cfg: Config, backend: Backend) -> AdminServer | None:
    """The admin listener of ``cfg`` (None without ``[admin]``). Raises OSError."""
    if cfg.admin is None:
        return None
    admin = AdminServer(backend, cfg.admin)
    try:
        await admin.start(cfg.admin.host, cfg.admin.port)
    except OSError as e:
        where = f"{cfg.admin.host}:{cfg.admin.port}"
        why = os.strerror(e.errno) if e.errno else str(e)
        raise OSError(e.errno, f"admin.address {where}: {why}") from None
    host, port = admin.address
    log.info("admin on http://%s/", f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
    if not cfg.admin.loopback and cfg.admin.token is None:
        log.warning("the admin listener is off loopback, with no token_file: anyone can reload")
    return admin


def reload_task(reload: Callable[[], Any]) -> Callable[[], None]:
    """A SIGHUP handler that runs the coroutine function ``reload`` (its outcome is logged)."""
    tasks: set[asyncio.Task[Any]] = set()

    def on_hup() -> None:
        task = asyncio.get_running_loop().create_task(reload())
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    return on_hup


class LocalBackend:
    """What the admin listener of a single process asks: its own ``Server``."""

    def __init__(self, server: Server, path: str | None) -> None:
        self.server = server
        self.path = path
        #: the config the process was started with (``fixed_at_start``)
        self.started = server.cfg

    async def ready(self) -> tuple[bool, str]:
        return await readiness(self.server)

    async def snapshot(self) -> dict[str, Any]:
        return self.server.snapshot()

    async def routes(self) -> dict[str, Any]:
        return routes_doc(self.server)

    async def reload(self) -> str | None:
        if self.path is None:
            return "no config file to re-read"
        try:
            new = load_config(self.path)
            fixed = fixed_at_start(self.started, new)
            if fixed:
                log.warning("%s: takes effect at the next start", ", ".join(fixed))
            # what was fixed at start stays: one process, the log format chosen then
            fmt = self.server.cfg.log_format
            self.server.reload(dataclasses.replace(new, workers=1, log_format=fmt))
        except (ConfigError, OSError) as e:
            log.error("reload of %s refused (%s); the running config stays", self.path, e)
            return str(e)
        log.info("reloaded %s", self.path)
        return None


def run(cfg: Config, *, drain: float | None = None, path: str | None = None) -> int:
    """Serve ``cfg`` in this process on uvloop until a signal; 0 on a clean stop."""
    import uvloop

    async def serve() -> None:
        server = Server(cfg)
        await server.start()
        for host, port in server.addresses:
            log.info("listening on %s:%d", host, port)
        backend = LocalBackend(server, path)
        admin: AdminServer | None = None
        stopper = Stopper(lambda: _grace(server, drain), reload_task(backend.reload))
        try:
            admin = await start_admin(cfg, backend)
            _settle_heap()
            await stopper.stop.wait()
        finally:
            if admin is not None:
                await admin.close()
            await server.stop(_grace(server, drain))
            stopper.close()

    try:
        uvloop.run(serve())
    except OSError as e:
        print(f"splice: {e}", file=sys.stderr)
        return 1
    return 0


def _settle_heap() -> None:
    """Once the process is set up to serve, before its first connection (``splice.heap``)."""
    log.debug("start-up heap frozen: %d objects", heap.settle())


def _grace(server: Server, drain: float | None) -> float:
    return server.cfg.drain_timeout if drain is None else drain


class Worker:
    """One worker's side of the control channel."""

    def __init__(self) -> None:
        self.server: Server | None = None
        #: this worker's place among the supervisor's: (index, workers), from "start"
        self.place = (0, 1)

    def _config(self, config: dict[str, Any]) -> Config:
        """The config file's data as this worker runs it: its share of every limit.

        ``workers`` is the running count, whatever the file says now (it takes effect
        at the supervisor's next start).
        """
        index, workers = self.place
        cfg = dataclasses.replace(parse_config(config), workers=workers)
        return share_limits(cfg, workers, index)

    async def start(self, config: dict[str, Any], index: int, workers: int) -> dict[str, Any]:
        self.place = (index, workers)
        server = Server(self._config(config))
        await server.start()
        self.server = server
        _settle_heap()
        return {"pid": os.getpid(), "addresses": server.addresses}

    def _live(self) -> Server:
        if self.server is None:
            raise RuntimeError("not started")
        return self.server

    async def snapshot(self) -> dict[str, Any]:
        return self._live().snapshot()

    async def routes(self) -> dict[str, Any]:
        return routes_doc(self._live())

    async def ready(self) -> dict[str, Any]:
        ok, why = await readiness(self._live())
        return {"ok": ok, "why": why}

    async def reload(self, config: dict[str, Any]) -> None:
        self._live().reload(self._config(config))

    def handlers(self) -> dict[str, Callable[..., Any]]:
        return {
            "start": self.start,
            "snapshot": self.snapshot,
            "routes": self.routes,
            "ready": self.ready,
            "reload": self.reload,
        }


def run_worker(control_fd: int, *, drain: float | None = None) -> int:
    """Serve as a worker until SIGTERM/SIGINT or until the supervisor is gone."""
    import uvloop

    async def serve() -> None:
        chan = await Channel.open(socket.socket(fileno=control_fd))
        worker = Worker()
        serving = asyncio.get_running_loop().create_task(chan.serve(worker.handlers()))

        def grace() -> float:
            return 0.0 if worker.server is None else _grace(worker.server, drain)

        stopper = Stopper(grace, lambda: log.info("SIGHUP: send it to the supervisor"))
        serving.add_done_callback(lambda _: stopper.stop.set())
        try:
            await stopper.stop.wait()
        finally:
            if worker.server is not None:
                await worker.server.stop(grace())
            chan.close()
            await asyncio.gather(serving, return_exceptions=True)
            stopper.close()

    uvloop.run(serve())
    return 0
