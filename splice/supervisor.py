"""The supervisor of ``workers = N`` (N > 1): N worker processes sharing each listener.

Ports are pinned first (``splice.pins``), then each worker is spawned
(``python -m splice worker``, its own session) with a control channel
(``splice.control``) and started with the pinned config. A worker that dies is
restarted after a backoff (``FIRST_BACKOFF`` doubling to ``MAX_BACKOFF``, reset once a
worker has lived ``STABLE_AFTER``). SIGTERM/SIGINT are forwarded to every worker; the
supervisor exits 0 once all have exited (a worker that was down when the stop came
does not count against it; one that finished starting as the stop came gets a second
SIGTERM, which its exit ignores: ``Stopper.close``).
SIGHUP and ``POST /reload`` re-read the config here and push it to the workers; one
that was starting meanwhile gets it once it is up (``generation``), and later restarts
start on it. Each worker enforces its share of every connection
limit (``splice.config_ops.share_limits``), so the limits hold for the whole instance.
The admin listener lives here: ``/metrics`` is the sum of the workers' snapshots
(refreshed every ``SNAPSHOT_EVERY`` s and at each scrape), plus the last snapshot of
each worker that died with its gauges at 0 (``exposition.retire``), so counters never
go back and levels (open connections, idle pool) are only the live workers'.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import signal
import sys
import time
import tomllib
from typing import Any

from splice.admin import AdminServer
from splice.config import Config, fixed_at_start, parse_config
from splice.control import ChannelClosed, RemoteError
from splice.errors import ConfigError
from splice.exposition import merge, retire
from splice.pins import Pins
from splice.routes import merge_routes
from splice.service import Stopper, reload_task, start_admin
from splice.worker_proc import WorkerProc

log = logging.getLogger("splice")

#: first restart of a crashed worker is quick: one crash should cost little capacity
FIRST_BACKOFF = 0.1
#: a worker that crashes at once every time is retried this often, not in a hot loop
MAX_BACKOFF = 30.0
#: a worker that lived this long counts as healthy again: the backoff starts over
STABLE_AFTER = 10.0
#: a worker must bind its listeners and answer "start" within this (imports included)
START_TIMEOUT = 20.0
#: a dead worker's metrics are lost for at most this long (see the module docstring)
SNAPSHOT_EVERY = 1.0
#: one call to a worker (snapshot, routes, ready: local work, or one shed-server probe)
CALL_TIMEOUT = 5.0
#: after the drain, how long workers get to close before they are killed
STOP_GRACE = 5.0


class Supervisor:
    def __init__(self, cfg: Config, path: str, *, drain: float | None, log_args: list[str]) -> None:
        self.cfg = cfg
        #: the config the processes were started with (``fixed_at_start``)
        self.started = cfg
        self.path = path
        self.drain = drain
        self.log_args = log_args
        self.pins = Pins()
        self.data: dict[str, Any] = {}
        #: bumped by each reload that took: a worker on an older one is brought up to it
        self.generation = 0
        #: one reload at a time, catch-ups included: generations only move forward
        self.reloading = asyncio.Lock()
        self.workers: list[WorkerProc] = []
        self.retired: dict[str, Any] = {}
        self.restarts = 0
        self.stopping = asyncio.Event()
        self.forwarded = False

    def grace(self) -> float:
        return self.cfg.drain_timeout if self.drain is None else self.drain

    def _prepare(self) -> tuple[Config, dict[str, Any], dict[Any, Any]]:
        """Read and check the config file; pin its ports. Raises ConfigError, OSError."""
        with open(self.path, "rb") as f:
            data = tomllib.load(f)
        cfg = parse_config(data)
        data, pins = self.pins.pin(cfg, {**data, "log_format": self.cfg.log_format})
        return cfg, data, pins

    async def run(self) -> int:
        cfg = self.cfg
        _, self.data, pins = self._prepare()
        self.pins.commit(pins)
        admin: AdminServer | None = None
        stopper = Stopper(self.grace, reload_task(self.reload), self._forward)
        self.workers = [WorkerProc(i) for i in range(cfg.workers)]
        slots = [asyncio.get_running_loop().create_task(self._slot(w)) for w in self.workers]
        refresher = asyncio.get_running_loop().create_task(self._refresh_loop())
        try:
            admin = await start_admin(cfg, self)
            if not await self._started(stopper):
                return 1
            for entry in self.data["listen"]:
                log.info("listening on %s", entry["address"])
            log.info("%d workers serving", cfg.workers)
            await stopper.stop.wait()
            return 0 if await self._stop(slots) else 1
        finally:
            self.stopping.set()
            refresher.cancel()
            await self._stop(slots)
            if admin is not None:
                await admin.close()
            self.pins.close()
            stopper.close()

    async def _started(self, stopper: Stopper) -> bool:
        """Wait for every worker's first start; False when one failed (or a signal came)."""
        loop = asyncio.get_running_loop()
        waiting = loop.create_task(_first_error([w.first for w in self.workers]))
        stop = loop.create_task(stopper.stop.wait())
        await asyncio.wait([waiting, stop], return_when=asyncio.FIRST_COMPLETED)
        for task in (waiting, stop):
            task.cancel()
        if stopper.stop.is_set() or not waiting.done() or waiting.cancelled():
            return True  # a signal came first (a start it cut short is no failure)
        if waiting.result() is None:
            return True  # all started
        log.error("%s; stopping", waiting.result())
        return False

    def _forward(self, sig: signal.Signals) -> None:
        self.forwarded = True
        for w in self.workers:
            w.send(sig)

    async def _slot(self, w: WorkerProc) -> None:
        """Keep worker ``w`` running until the supervisor stops."""
        fails = 0
        try:
            while not self.stopping.is_set():
                born = time.monotonic()
                code = await self._run_once(w)
                if code is None:
                    return
                fails = 0 if time.monotonic() - born >= STABLE_AFTER else fails + 1
                delay = min(MAX_BACKOFF, FIRST_BACKOFF * 2 ** max(0, fails - 1))
                log.warning("worker %d exited (%s); restarting in %.1f s", w.index, code, delay)
                self.restarts += 1
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stopping.wait(), delay)
        finally:
            w.started("stopped before it started")

    async def _run_once(self, w: WorkerProc) -> str | None:
        """Spawn, serve until the worker exits: how it exited, or None: no restart."""
        args = [*self.log_args, "worker", "--index", str(w.index)]
        if self.drain is not None:
            args += ["--drain", str(self.drain)]
        generation, served = self.generation, False
        try:
            await w.spawn(args, self.data, len(self.workers), START_TIMEOUT)
        except (OSError, ChannelClosed, TimeoutError) as e:
            why = e or type(e).__name__
            w.started(f"worker {w.index} failed to start: {why}")
            if self.forwarded:  # a stop signal reached it while it was starting
                log.info("worker %d stopped while starting (%s)", w.index, why)
            else:
                log.error("worker %d failed to start: %s", w.index, why)
        else:
            served = True
            w.generation = generation
            w.started(None)
            if self.stopping.is_set():  # started while the supervisor was stopping
                w.terminate()
            else:
                await self._catch_up(w)
            assert w.reader is not None
            await w.reader  # until the channel closes: the worker is exiting
        asked = self.forwarded  # a stop was requested before it exited
        code = await w.reap(self.grace() + STOP_GRACE if self.forwarded else STOP_GRACE)
        # only a worker that served and was asked to stop must have exited 0: one that
        # crashed earlier was restarted (or is waiting to be), one that was starting may
        # have taken the signal before it could handle it
        w.clean = not (served and asked) or w.proc is None or w.proc.returncode == 0
        if w.last is not None:  # its counts stay in the sums: counters never go back
            self.retired = merge([self.retired, retire(w.last)])
            w.last = None
        return None if self.stopping.is_set() or w.first.result() is not None else code

    async def _stop(self, slots: list[asyncio.Task[None]]) -> bool:
        """Stop every worker (SIGTERM unless a signal was forwarded); True if all exited."""
        self.stopping.set()
        if not self.forwarded:
            self._forward(signal.SIGTERM)
        _, pending = await asyncio.wait(slots, timeout=self.grace() + 2 * STOP_GRACE)
        for task in pending:
            task.cancel()
        return not pending and all(w.clean for w in self.workers)

    async def _each(self, op: str, **args: Any) -> list[tuple[WorkerProc, Any]]:
        """Call ``op`` on every ready worker at once: (worker, result or exception)."""
        live = [w for w in self.workers if w.ready]
        calls = [w.call(op, CALL_TIMEOUT, **args) for w in live]
        results = await asyncio.gather(*calls, return_exceptions=True)
        return list(zip(live, results, strict=True))

    async def _refresh(self) -> None:
        for w, snap in await self._each("snapshot"):
            if isinstance(snap, dict) and w.ready:
                w.last = snap

    async def _refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(SNAPSHOT_EVERY)
            await self._refresh()

    # -- the admin Backend --------------------------------------------------------------

    async def snapshot(self) -> dict[str, Any]:
        await self._refresh()
        live = [w for w in self.workers if w.ready and w.last is not None]
        snap = merge([self.retired, *(w.last for w in live if w.last is not None)])
        each = {
            str(w.index): {
                "pid": w.pid,
                "accepted": (w.last or {}).get("counts", {}).get("accepted", 0),
            }
            for w in live
        }
        snap["supervisor"] = {"workers": len(live), "restarts": self.restarts, "each": each}
        return snap

    async def ready(self) -> tuple[bool, str]:
        lines, good = [], 0
        for w, r in await self._each("ready"):
            if isinstance(r, BaseException):
                lines.append(f"worker {w.index} (pid {w.pid}): no answer ({r})")
                continue
            good += bool(r["ok"])
            lines.append(f"worker {w.index} (pid {w.pid}): " + r["why"].replace("\n", "; "))
        head = f"workers: {good} of {len(self.workers)} ready"
        return good > 0, "\n".join([head, *lines])

    async def routes(self) -> dict[str, Any]:
        docs = [r for _, r in await self._each("routes") if isinstance(r, dict)]
        if not docs:
            return {"error": "no worker is running", "workers": 0}
        return {**merge_routes(docs), "workers": len(docs)}

    async def _catch_up(self, w: WorkerProc) -> None:
        """Bring ``w``, started on an older config than a reload since, to the current one.

        A worker that refuses it (or does not answer) is stopped: it is restarted on the
        current config, so every worker ends up on it.
        """
        async with self.reloading:
            if not w.ready or w.generation >= self.generation:
                return
            generation = self.generation
            if await self._push(w, "missed a reload and could not take it"):
                w.generation = generation
                log.info("worker %d (pid %d) brought to the reloaded config", w.index, w.pid)

    async def _push(self, w: WorkerProc, failing: str) -> bool:
        """Reload ``w`` onto the running config; True once it took it. A live worker that
        refuses or does not answer is restarted, on that config (``failing`` says when)."""
        try:
            await w.call("reload", CALL_TIMEOUT, config=self.data)
        except (ChannelClosed, TimeoutError) as e:
            if w.connected:
                why = e or type(e).__name__
                log.error("worker %d %s (%s); restarting it", w.index, failing, why)
                w.replace(self.grace() + STOP_GRACE)
            return False
        return True

    async def reload(self) -> str | None:
        async with self.reloading:
            error = await self._reload()
        if error is None:  # a worker that was starting meanwhile was left behind: catch up
            await asyncio.gather(*(self._catch_up(w) for w in self.workers))
        return error

    async def _reload(self) -> str | None:
        try:
            cfg, data, pins = self._prepare()
        except (OSError, ValueError, ConfigError) as e:
            log.error("reload of %s refused (%s); the running config stays", self.path, e)
            return str(e)
        answers = await self._each("reload", config=data)
        refused = [f"worker {w.index}: {r}" for w, r in answers if isinstance(r, RemoteError)]
        if refused:  # all or nothing: the workers that took it go back to the running one
            log.error("reload of %s refused by %s", self.path, "; ".join(refused))
            await asyncio.gather(*(self._undo(w) for w, r in answers if r is None))
            self.pins.abandon(pins)
            return "; ".join(refused)
        fixed = fixed_at_start(self.started, cfg)
        if fixed:
            log.warning("%s: takes effect at the next start", ", ".join(fixed))
        self.pins.commit(pins)
        self.cfg, self.data = dataclasses.replace(cfg, log_format=self.cfg.log_format), data
        self.generation += 1
        for w, r in answers:
            if r is None:
                w.generation = self.generation
            elif w.connected:  # alive, and no answer in time
                log.error("worker %d did not answer the reload; restarting it", w.index)
                w.replace(self.grace() + STOP_GRACE)
            # else it died: its restart spawns on the config just committed
        log.info("reloaded %s", self.path)
        return None

    async def _undo(self, w: WorkerProc) -> None:
        """Put ``w``, which took a reload another worker refused, back on the running
        config (restarted on it if it cannot be)."""
        if await self._push(w, "could not undo the reload"):
            log.info("reload undone in worker %d", w.index)


def supervise(cfg: Config, path: str, *, drain: float | None, log_args: list[str]) -> int:
    """Run the supervisor on uvloop; its exit status."""
    import uvloop

    async def main() -> int:
        return await Supervisor(cfg, path, drain=drain, log_args=log_args).run()

    try:
        return uvloop.run(main())
    except (OSError, ValueError, ConfigError) as e:  # a port taken; the file changed meanwhile
        print(f"splice: {e}", file=sys.stderr)
        return 1


async def _first_error(firsts: list[asyncio.Future[str | None]]) -> str | None:
    """The first start failure among ``firsts``, or None once all started."""
    for done in asyncio.as_completed(firsts):
        error = await done
        if error is not None:
            return error
    return None
