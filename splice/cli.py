"""The ``splice`` command: serve, check, demo.

``serve`` runs until SIGTERM or SIGINT: it stops accepting, lets open connections
finish for ``--drain`` seconds, closes the rest and exits 0; a second SIGINT exits
at once. ``check`` validates a config and prints the route table (exit 1 on error).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Sequence

from splice import __version__
from splice.config import Config, load_config
from splice.errors import ConfigError
from splice.routing.names import canonical_label

log = logging.getLogger("splice")


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="splice", description=__doc__.splitlines()[0])
    p.add_argument("--version", action="version", version=f"splice {__version__}")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve", help="run the splicer")
    s.add_argument("-c", "--config", required=True, help="TOML config file")
    s.add_argument(
        "--drain", type=float, default=None, help="seconds to finish at shutdown (drain_timeout)"
    )
    c = sub.add_parser("check", help="validate a config and print its routes")
    c.add_argument("-c", "--config", required=True)
    d = sub.add_parser("demo", help="serve two demo sheds on loopback behind splice")
    d.add_argument("--port", type=int, default=8081, help="splice's port (default 8081)")
    args = p.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(message)s"
    )
    if args.cmd == "check":
        return _check(args.config)
    if args.cmd == "demo":
        from splice.demo import run_demo

        return run_demo(args.port)
    try:
        cfg = load_config(args.config)
    except ConfigError as e:
        print(f"splice: {args.config}: {e}", file=sys.stderr)
        return 1
    return run(cfg, drain=args.drain, path=args.config)


def _check(path: str) -> int:
    try:
        cfg = load_config(path)
    except ConfigError as e:
        print(f"splice: {path}: {e}", file=sys.stderr)
        return 1
    print(f"config {path}: ok")
    print(route_table(cfg))
    return 0


def route_table(cfg: Config) -> str:
    """The routes a config gives, one shed per line, as a human reads them."""
    base = cfg.domains[0]
    lines = [f"domains: {', '.join(cfg.domains)}   default port: {cfg.default_port}"]
    for lc in cfg.listen:
        lines.append(f"listen {lc.host}:{lc.port} ({lc.mode})")
    lines.append(f"resolvers: {' -> '.join(cfg.resolver.chain)}   dial: {cfg.dial}")
    for name, shed in sorted(cfg.sheds.items()):
        pol = shed.policy
        default = pol.default_port or cfg.default_port
        ports = ", ".join(f"{d.port} ({d.label})" if d.label else str(d.port) for d in pol.ports)
        lines.append(
            f"  {name}.{base} -> {shed.address or '(resolved)'}:{default}"
            f"   ports: {ports or 'any'}   e.g. {canonical_label(name, default)}.{base}"
        )
    return "\n".join(lines)


def run(cfg: Config, *, drain: float | None = None, path: str | None = None) -> int:
    """Serve ``cfg`` on uvloop until a signal; 0 on a clean stop. SIGHUP reloads ``path``."""
    import uvloop

    from splice.server import Server

    async def serve() -> None:
        server = Server(cfg)
        await server.start()
        for host, port in server.addresses:
            log.info("listening on %s:%d", host, port)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        interrupts = 0

        def on_hup() -> None:
            if path is None:
                return
            try:
                new = load_config(path)
                server.reload(new)
            except (ConfigError, OSError) as e:
                log.error("reload of %s refused (%s); the running config stays", path, e)
                return
            log.info("reloaded %s", path)

        def on_signal(sig: signal.Signals) -> None:
            nonlocal interrupts
            interrupts += 1
            if interrupts > 1 and sig == signal.SIGINT:
                log.warning("second interrupt: exiting now")
                raise SystemExit(1)
            log.info("%s: stopping (draining for up to %.0f s)", sig.name, grace)
            stop.set()

        grace = server.cfg.drain_timeout if drain is None else drain
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, on_signal, sig)
        loop.add_signal_handler(signal.SIGHUP, on_hup)
        try:
            await stop.wait()
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)
            grace = server.cfg.drain_timeout if drain is None else drain
            await server.stop(grace)

    try:
        uvloop.run(serve())
    except OSError as e:
        print(f"splice: {e}", file=sys.stderr)
        return 1
    return 0
