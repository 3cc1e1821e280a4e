"""The ``splice`` command: serve, check, routes, demo.

``serve`` runs until SIGTERM or SIGINT: it stops accepting, lets open connections
finish for ``--drain`` seconds, closes the rest and exits 0; a second SIGINT exits
at once. With ``workers`` > 1 it runs a supervisor (``splice.supervisor``) instead.
``check`` validates a config and prints the route table (exit 1 on error; with
``--reach`` also asks shed-server). ``routes`` prints a running instance's /routes.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import sys
from collections.abc import Sequence

from splice import __version__
from splice.build import build
from splice.config import Config, load_config, parse_address
from splice.errors import ConfigError
from splice.logfmt import FORMATS, LEVELS, setup_logging
from splice.routing.names import canonical_label

__all__ = ["main", "route_table", "run"]

log = logging.getLogger("splice")


def _parser() -> argparse.ArgumentParser:
    # accepted before or after the subcommand: `splice --log-format json serve` or
    # `splice serve --log-format json`
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--log-level", choices=LEVELS, default=argparse.SUPPRESS)
    common.add_argument(
        "--log-format", choices=FORMATS, default=argparse.SUPPRESS, help="default: log_format"
    )
    p = argparse.ArgumentParser(
        prog="splice", description=__doc__.splitlines()[0], parents=[common]
    )
    p.add_argument("--version", action="version", version=f"splice {__version__} ({build()})")
    sub = p.add_subparsers(dest="cmd", required=True, metavar="{serve,check,routes,demo,passwd}")
    s = sub.add_parser("serve", help="run the splicer", parents=[common])
    s.add_argument("-c", "--config", required=True, help="TOML config file")
    s.add_argument(
        "--drain", type=float, default=None, help="seconds to finish at shutdown (drain_timeout)"
    )
    c = sub.add_parser("check", help="validate a config and print its routes", parents=[common])
    c.add_argument("-c", "--config", required=True)
    c.add_argument("--reach", action="store_true", help="also ask shed-server for /api/info")
    r = sub.add_parser("routes", help="print the routes of a running splice", parents=[common])
    where = r.add_mutually_exclusive_group(required=True)
    where.add_argument("-c", "--config", help="find the admin listener in this config")
    where.add_argument("--admin", metavar="HOST:PORT", help="the admin listener's address")
    r.add_argument("--token-file", help="its bearer token (default: [admin] token_file of -c)")
    r.add_argument("--json", action="store_true", help="print the /routes JSON as it is")
    d = sub.add_parser("demo", help="serve two demo sheds on loopback behind splice")
    d.add_argument("--port", type=int, default=8081, help="splice's port (default 8081)")
    from splice.store_cli import add_store_commands

    add_store_commands(sub)
    pw = sub.add_parser("passwd", help="hash a proxy password for [forward] users")
    pw.add_argument("user", help="the proxy user name")
    w = sub.add_parser("worker", parents=[common])  # run by the supervisor, not by people
    w.add_argument("--control", type=int, required=True)
    w.add_argument("--index", type=int, required=True)
    w.add_argument("--drain", type=float, default=None)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    level = getattr(args, "log_level", "info")
    fmt: str | None = getattr(args, "log_format", None)
    if args.cmd == "passwd":
        return _passwd(args.user)
    if args.cmd in ("store", "ca"):
        from splice.store_cli import run_store_command

        return run_store_command(args)
    if args.cmd == "worker":
        from splice.service import run_worker

        setup_logging(level, fmt or "text", worker=args.index)
        return run_worker(args.control, drain=args.drain)
    if args.cmd == "serve":
        return _serve(args.config, args.drain, level, fmt)
    setup_logging(level, fmt or "text")
    if args.cmd == "check":
        return _check(args.config, args.reach)
    if args.cmd == "routes":
        return _routes(args.config, args.admin, args.json, args.token_file)
    from splice.demo import run_demo

    return run_demo(args.port)


def run(cfg: Config, *, drain: float | None = None, path: str | None = None) -> int:
    """Serve ``cfg`` in this process (see ``splice.service.run``); imported on use."""
    from splice.service import run as run_service

    return run_service(cfg, drain=drain, path=path)


def _serve(path: str, drain: float | None, level: str, fmt: str | None) -> int:
    try:
        cfg = load_config(path)
    except ConfigError as e:
        print(f"splice: {path}: {e}", file=sys.stderr)
        return 1
    fmt = fmt or cfg.log_format
    cfg = dataclasses.replace(cfg, log_format=fmt)  # the flag wins, for the access log too
    setup_logging(level, fmt)
    if cfg.workers == 1:
        return run(cfg, drain=drain, path=path)
    from splice.supervisor import supervise

    log_args = ["--log-level", level, "--log-format", fmt]
    return supervise(cfg, path, drain=drain, log_args=log_args)


def _check(path: str, reach: bool) -> int:
    try:
        cfg = load_config(path)
    except ConfigError as e:
        print(f"splice: {path}: {e}", file=sys.stderr)
        return 1
    print(f"config {path}: ok")
    print(route_table(cfg))
    if not reach:
        return 0
    from splice.health import needs_shed_server, reach_shed_server

    if not needs_shed_server(cfg):
        print("shed-server: not used by this config (no shed-api resolver, no connect dial)")
        return 0
    ok, message = asyncio.run(reach_shed_server(cfg))
    print(message, file=sys.stdout if ok else sys.stderr)
    return 0 if ok else 1


def _routes(path: str | None, admin: str | None, as_json: bool, token_file: str | None) -> int:
    from splice.config_ops import read_token
    from splice.routes import fetch_routes, format_routes

    try:
        token = None
        if admin is not None:
            host, port = parse_address("--admin", admin)
        else:
            assert path is not None
            cfg = load_config(path)
            if cfg.admin is None:
                raise ConfigError("admin", f"{path} has no [admin] table; give --admin HOST:PORT")
            host, port, token = cfg.admin.host, cfg.admin.port, cfg.admin.token
        if token_file is not None:
            token = read_token("--token-file", token_file)
    except ConfigError as e:
        print(f"splice: {e}", file=sys.stderr)
        return 1
    import h11

    try:
        doc = fetch_routes(host, port, token)
    except OSError as e:
        print(f"splice: no admin listener answers at {host}:{port} ({e})", file=sys.stderr)
        return 1
    except ValueError as e:
        print(f"splice: the admin listener at {host}:{port}: {e}", file=sys.stderr)
        return 1
    except h11.ProtocolError as e:  # something listens there, but it does not speak HTTP
        print(f"splice: {host}:{port} does not answer HTTP ({e})", file=sys.stderr)
        return 1
    if "error" in doc:
        print(f"splice: {doc['error']}", file=sys.stderr)
        return 1
    print(json.dumps(doc, indent=2) if as_json else format_routes(doc))
    return 0


def route_table(cfg: Config) -> str:
    """The routes a config gives, one shed per line, as a human reads them."""
    base = cfg.domains[0]
    lines = [f"domains: {', '.join(cfg.domains)}   default port: {cfg.default_port}"]
    for lc in cfg.listen:
        lines.append(f"listen {lc.host}:{lc.port} ({lc.mode})")
    lines.append(f"resolvers: {' -> '.join(cfg.resolver.chain)}   dial: {cfg.dial}")
    admin = f"{cfg.admin.host}:{cfg.admin.port}" if cfg.admin else "none"
    lines.append(f"workers: {cfg.workers}   log format: {cfg.log_format}   admin: {admin}")
    # a TLS passthrough listener picks another default port (tls_port, 443): show it
    tls = any(lc.mode == "tls-passthrough" for lc in cfg.listen)
    for name, shed in sorted(cfg.sheds.items()):
        pol = shed.policy
        default = pol.default_port or cfg.default_port
        ports = ", ".join(f"{d.port} ({d.label})" if d.label else str(d.port) for d in pol.ports)
        tls_port = f"   tls: {pol.default_tls_port()}" if tls else ""
        lines.append(
            f"  {name}.{base} -> {shed.address or '(resolved)'}:{default}{tls_port}"
            f"   ports: {ports or 'any'}   e.g. {canonical_label(name, default)}.{base}"
        )
    return "\n".join(lines)


def _passwd(user: str) -> int:
    """Read a password twice (no echo; or one line from a pipe) and print the config line."""
    import getpass

    from splice.egress.passwords import hash_password

    if sys.stdin.isatty():
        first = getpass.getpass(f"password for {user}: ")
        if first != getpass.getpass("again: "):
            print("splice: the passwords differ", file=sys.stderr)
            return 1
    else:
        first = sys.stdin.readline().rstrip("\n")
    if not first:
        print("splice: an empty password is not allowed", file=sys.stderr)
        return 1
    print(f'{user} = "{hash_password(first)}"   # in [forward] users')
    return 0
