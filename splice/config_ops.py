"""The operations part of the config: ``workers``, ``log_format`` and ``[admin]``.

Kept apart from ``splice.config`` (which calls ``parse_ops``) so the routing config
stays readable. Same rules: unknown keys are errors and every error names its key.
``workers`` defaults to ``"auto"``: one per core this process may run on
(``os.sched_getaffinity``); ``workers = 1`` runs one process and no supervisor.

The connection limits (``max_connections``, ``max_connections_per_shed``, each
``[sheds.NAME] max_connections``) are for the whole instance: with N workers, worker i
enforces ``worker_share(L, N, i)`` of a limit L, the shares adding up to L. A worker
never gets less than one, so a limit below N admits N in all (``max(L, N)``); 0 stays
"no limit". ``share_limits`` applies this to a worker's ``Config`` at start and at
every reload. The resolver cache is per worker: each one looks a name up itself.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from splice.errors import ConfigError

if TYPE_CHECKING:
    from splice.config import Config

#: one worker per core: the connection limits are split between them (``share_limits``)
WORKERS = "auto"
#: a fork bomb by typo is worse than a refused config; no host has this many cores
MAX_WORKERS = 1024
LOG_FORMATS = ("text", "json")
#: loopback: /reload and /routes are for the operator on the host, not the network
ADMIN_ADDRESS = "127.0.0.1:8082"
OPS_KEYS = {"workers", "log_format", "admin"}
ADMIN_KEYS = ("address", "allowed_hosts", "token_file")
#: Host names every admin listener answers to (as well as its own address)
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
#: a token file bigger than this is not one token
MAX_TOKEN = 4096
_HOST_NAME = re.compile(r"[a-z0-9_-]+(\.[a-z0-9_-]+)*")


@dataclass(frozen=True, slots=True)
class AdminConfig:
    host: str
    port: int
    #: Host names (no port) accepted besides ``LOOPBACK_NAMES`` and ``host``
    allowed_hosts: tuple[str, ...] = ()
    token_file: str | None = None
    #: read from ``token_file`` when the config is loaded; never in a repr
    token: str | None = field(default=None, repr=False)

    @property
    def loopback(self) -> bool:
        return ipaddress.ip_address(self.host).is_loopback


def parse_ops(data: Mapping[str, Any]) -> dict[str, Any]:
    """``Config`` keyword arguments for the operations keys of ``data``."""
    return {
        "workers": _workers(data.get("workers", WORKERS)),
        "log_format": _log_format(data.get("log_format", "text")),
        "admin": _admin(data.get("admin")),
    }


def _workers(v: Any) -> int:
    if v == "auto":  # the cores this process may run on (taskset, systemd CPUAffinity)
        return min(len(os.sched_getaffinity(0)), MAX_WORKERS) or 1
    if not isinstance(v, int) or isinstance(v, bool) or not 1 <= v <= MAX_WORKERS:
        raise ConfigError("workers", f"{v!r} must be 'auto' or an integer from 1 to {MAX_WORKERS}")
    return v


def _log_format(v: Any) -> str:
    if v not in LOG_FORMATS:
        raise ConfigError("log_format", f"{v!r} is not one of {', '.join(LOG_FORMATS)}")
    return str(v)


def _admin(v: Any) -> AdminConfig | None:
    if v is None:
        return None
    if not isinstance(v, dict):
        raise ConfigError("admin", "must be a table, e.g. [admin] address = '127.0.0.1:8082'")
    for k in v:
        if k not in ADMIN_KEYS:
            raise ConfigError(f"admin.{k}", f"unknown key (known: {', '.join(ADMIN_KEYS)})")
    from splice.config import parse_address  # splice.config imports this module

    host, port = parse_address("admin.address", v.get("address", ADMIN_ADDRESS))
    hosts = v.get("allowed_hosts", [])
    if not isinstance(hosts, list):
        raise ConfigError("admin.allowed_hosts", "must be a list of host names")
    allowed = tuple(_host_name(f"admin.allowed_hosts[{i}]", h) for i, h in enumerate(hosts))
    path = v.get("token_file")
    if path is not None and not (isinstance(path, str) and path):
        raise ConfigError("admin.token_file", "must be the path of a file holding the token")
    token = None if path is None else read_token("admin.token_file", path)
    return AdminConfig(host, port, allowed, path, token)


def canonical_host(name: str) -> str:
    """A host name as the admin listener compares it: lower case; an IP address (no
    brackets) in its one canonical spelling."""
    try:
        return str(ipaddress.ip_address(name))
    except ValueError:
        return name.lower()


def _host_name(key: str, v: Any) -> str:
    if isinstance(v, str):
        bare = v[1:-1] if v[:1] == "[" and v[-1:] == "]" else v
        with contextlib.suppress(ValueError):
            return str(ipaddress.ip_address(bare))
        if _HOST_NAME.fullmatch(v.lower()):
            return v.lower()
    raise ConfigError(key, f"{v!r} is not a host name or IP address (no scheme, no port)")


def read_token(key: str, path: str) -> str:
    """The bearer token in ``path``: one line (its newline dropped), in a file only its
    owner may read or write (mode 0600 or stricter, as ssh asks of a key)."""
    try:
        with open(path, "rb") as f:
            mode = os.fstat(f.fileno()).st_mode
            data = f.read(MAX_TOKEN + 1)
    except OSError as e:
        raise ConfigError(key, f"cannot read {path}: {e.strerror}") from None
    if mode & 0o077:
        why = f"mode {stat.S_IMODE(mode):04o}: group or others may use it; chmod 600 {path}"
        raise ConfigError(key, f"{path} is not private ({why})")
    token = data.removesuffix(b"\n").removesuffix(b"\r")
    if not token:
        raise ConfigError(key, f"{path} is empty; write one token in it")
    if len(token) > MAX_TOKEN or not all(0x21 <= b <= 0x7E for b in token):
        one = f"up to {MAX_TOKEN} visible ASCII characters on one line"
        raise ConfigError(key, f"{path} must hold one token: {one}")
    return token.decode("ascii")


def worker_share(limit: int, workers: int, index: int) -> int:
    """Worker ``index``'s part of an instance-wide ``limit`` (0: no limit) among ``workers``.

    The first ``limit % workers`` workers take one more than the others, so the shares
    add up to ``limit``; but every worker admits at least one (the sum is then
    ``workers``).
    """
    if not 0 <= index < workers:
        raise ValueError(f"worker index {index} is not in 0..{workers - 1}")
    if not limit:
        return 0
    return max(1, limit // workers + (1 if index < limit % workers else 0))


def share_limits(cfg: Config, workers: int, index: int) -> Config:
    """``cfg`` as worker ``index`` of ``workers`` enforces it: each connection limit its share."""
    sheds = {
        name: replace(sc, max_connections=worker_share(sc.max_connections, workers, index))
        for name, sc in cfg.sheds.items()
    }
    return replace(
        cfg,
        max_connections=worker_share(cfg.max_connections, workers, index),
        max_connections_per_shed=worker_share(cfg.max_connections_per_shed, workers, index),
        sheds=sheds,
    )
