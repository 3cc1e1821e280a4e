"""``splice store ...`` and ``splice ca init``: the record/replay store from the shell.

Every command takes ``-c FILE`` and finds the store (``[forward.store] path``) and the
CA (``ca``) there. ``ls [--url GLOB]``, ``show KEY``, ``rm KEY|--url GLOB``, ``verify``
(re-hash every blob; exit 1 on a mismatch), ``export FILE.tar``, ``import FILE.tar``.
Keys may be shortened to any unique prefix. Tables for people, ``--json`` for programs.
Exit status: 0 done, 1 refused or failed (the message says why), 2 bad usage.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from splice.ca import CaError, init_ca
from splice.errors import ConfigError
from splice.store.archive import ArchiveError, export_store, import_store
from splice.store.index import Entry
from splice.store.settings import StoreSettings, load_store_settings
from splice.store.store import Store

#: characters of a key a table shows; ``show`` and ``rm`` take any unique prefix
SHORT_KEY = 12


class CliError(Exception):
    """A refusal to print as ``splice: MESSAGE`` with exit status 1."""


def add_store_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``store`` and ``ca`` to the ``splice`` command's subparsers."""
    store = sub.add_parser("store", help="list, show, remove, verify, export, import recordings")
    cmds = store.add_subparsers(dest="store_cmd", required=True)
    ls = _command(cmds, "ls", "list recorded exchanges")
    ls.add_argument("--url", metavar="GLOB", help="only URLs matching this glob (fnmatch)")
    _command(cmds, "show", "one entry in full").add_argument("key", help="a key or unique prefix")
    rm = _command(cmds, "rm", "remove entries (and blobs nothing else uses)")
    which = rm.add_mutually_exclusive_group(required=True)
    which.add_argument("key", nargs="?", help="a key or unique prefix")
    which.add_argument("--url", metavar="GLOB", help="every entry whose URL matches")
    _command(cmds, "verify", "re-hash every blob; exit 1 on a mismatch")
    _command(cmds, "export", "write the store to a tar file").add_argument("file")
    _command(cmds, "import", "add a tar file's entries").add_argument("file")
    ca = sub.add_parser("ca", help="the CA for intercept_tls")
    ca_cmds = ca.add_subparsers(dest="ca_cmd", required=True)
    _command(ca_cmds, "init", "create ca.pem and ca-key.pem in [forward.store] ca")


def _command(
    cmds: argparse._SubParsersAction[argparse.ArgumentParser], name: str, text: str
) -> argparse.ArgumentParser:
    p = cmds.add_parser(name, help=text, description=text)
    p.add_argument("-c", "--config", required=True, help="TOML config file")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return p


def run_store_command(args: argparse.Namespace) -> int:
    """Run ``splice store ...`` or ``splice ca ...``; the exit status."""
    try:
        settings = load_store_settings(args.config)
        if args.cmd == "ca":
            return _ca_init(settings, args)
        store = _open(settings)
        try:
            return _STORE_COMMANDS[args.store_cmd](store, args)
        finally:
            store.close()
    except ConfigError as e:
        print(f"splice: {args.config}: {e}", file=sys.stderr)
    except (CliError, CaError, ArchiveError) as e:
        print(f"splice: {e}", file=sys.stderr)
    except OSError as e:
        print(f"splice: {e.filename or ''}: {e.strerror or e}", file=sys.stderr)
    return 1


def _open(settings: StoreSettings) -> Store:
    if settings.path is None:
        raise ConfigError("forward.store.path", "is not set")
    if not Path(settings.path).is_dir():
        raise CliError(f"there is no store at {settings.path} (nothing recorded yet?)")
    return Store(settings.path, settings.max_bytes)


def _ca_init(settings: StoreSettings, args: argparse.Namespace) -> int:
    if settings.ca is None:
        raise ConfigError("forward.store.ca", "is not set")
    cert = init_ca(settings.ca)
    if args.json:
        _print_json({"ca": str(cert), "key": str(cert.parent / "ca-key.pem")})
    else:
        print(f"created {cert} (sandboxes trust this) and its key {cert.parent / 'ca-key.pem'}")
    return 0


def _when(t: float) -> str:
    """A time as UTC, or as the number when no calendar holds it (a hand-made entry):
    one bad row must not make the whole listing fail."""
    try:
        return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    except (OverflowError, ValueError, OSError, TypeError):
        return repr(t)


def _summary(e: Entry) -> dict[str, Any]:
    return {
        "key": e.key,
        "method": e.method,
        "url": e.url,
        "status": e.status,
        "size": e.size,
        "recorded_at": _when(e.recorded_at),
        "used_at": _when(e.used_at),
        "blob": e.blob,
    }


def _print_json(doc: Any) -> None:
    print(json.dumps(doc, indent=2))


def _size(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    value = n / 1024
    for unit in ("KiB", "MiB", "GiB"):
        if value < 1024:
            return f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def _ls(store: Store, args: argparse.Namespace) -> int:
    entries = store.entries(args.url)
    if args.json:
        _print_json([_summary(e) for e in entries])
        return 0
    rows = [("KEY", "METHOD", "STATUS", "SIZE", "RECORDED", "URL")]
    rows += [
        (e.key[:SHORT_KEY], e.method, str(e.status), _size(e.size), _when(e.recorded_at), e.url)
        for e in entries
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)) + "  " + r[5])
    bodies, held = _size(sum(e.size for e in entries)), _size(store.total_bytes())
    print(f"{len(entries)} entries, {bodies} of bodies; the store holds {held}")
    return 0


def _resolve(store: Store, prefix: str) -> Entry:
    if not prefix:
        raise CliError("give a key, or a unique prefix of one (an empty one matches all)")
    found = store.find(prefix)
    if not found:
        raise CliError(f"no entry has a key starting with {prefix!r}")
    if len(found) > 1:
        raise CliError(f"{prefix!r} matches {len(found)} keys; give more of the key")
    return found[0]


def _show(store: Store, args: argparse.Namespace) -> int:
    e = _resolve(store, args.key)
    if args.json:
        _print_json({**_summary(e), "reason": e.reason, "headers": e.to_json()["headers"],
                     "request": e.request})  # fmt: skip
        return 0
    for name, value in _summary(e).items():
        print(f"{name + ':':13}{value}")
    print(f"{'matched:':13}{json.dumps(e.request.get('match', {}), sort_keys=True)}")
    print(f"response:    {e.status} {e.reason}")
    for name, value in e.headers:
        print(f"  {name}: {value}")
    return 0


def _rm(store: Store, args: argparse.Namespace) -> int:
    # ``is not None``: an empty key (``rm "$KEY"`` with KEY unset) is an error, never "all"
    keys = (
        [_resolve(store, args.key).key]
        if args.key is not None
        else [e.key for e in store.entries(args.url)]
    )
    removed = store.remove(keys)
    if args.json:
        _print_json({"removed": removed, "keys": keys})
    else:
        print(f"removed {removed} {'entry' if removed == 1 else 'entries'}")
    return 0


def _verify(store: Store, args: argparse.Namespace) -> int:
    report = store.verify()
    if args.json:
        _print_json({"ok": report.ok, "checked": report.checked, "bad": report.bad,
                     "orphans": report.orphans})  # fmt: skip
        return 0 if report.ok else 1
    for bad in report.bad:
        print(f"BAD {bad['blob']} (entry {bad['key']}): {bad['problem']}")
    if report.orphans:
        print(f"{len(report.orphans)} blobs no entry uses (harmless; removed within the hour)")
    verdict = "ok" if report.ok else f"{len(report.bad)} damaged"
    print(f"checked {report.checked} blobs: {verdict}")
    return 0 if report.ok else 1


def _export(store: Store, args: argparse.Namespace) -> int:
    written, skipped = export_store(store, args.file)
    if args.json:
        _print_json({"exported": written, "skipped": skipped})
    else:
        print(f"exported {written} entries to {args.file}")
        for key in skipped:
            print(f"skipped {key}: evicted while exporting")
    return 0


def _import(store: Store, args: argparse.Namespace) -> int:
    imported, refused = import_store(store, args.file)
    if args.json:
        _print_json({"imported": imported, "refused": refused})
    else:
        print(f"imported {imported} entries from {args.file}")
        for line in refused:
            print(f"refused {line}")
    return 1 if refused else 0


_STORE_COMMANDS: dict[str, Callable[[Store, argparse.Namespace], int]] = {
    "ls": _ls,
    "show": _show,
    "rm": _rm,
    "verify": _verify,
    "export": _export,
    "import": _import,
}
