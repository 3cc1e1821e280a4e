"""The operations part of the config: ``workers``, ``log_format`` and ``[admin]``.

Kept apart from ``splice.config`` (which calls ``parse_ops``) so the routing config
stays readable. Same rules: unknown keys are errors and every error names its key.
``workers = "auto"`` means one per core (``os.cpu_count()``); the default is 1 (see
the README's "Workers" section for why).
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from splice.errors import ConfigError

#: one process: per-process limits (max_connections), one resolver cache, one PID
WORKERS = 1
#: a fork bomb by typo is worse than a refused config; no host has this many cores
MAX_WORKERS = 1024
LOG_FORMATS = ("text", "json")
#: loopback: /reload and /routes are for the operator on the host, not the network
ADMIN_ADDRESS = "127.0.0.1:8082"
OPS_KEYS = {"workers", "log_format", "admin"}


@dataclass(frozen=True, slots=True)
class AdminConfig:
    host: str
    port: int

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
        return len(os.sched_getaffinity(0)) or 1
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
        if k != "address":
            raise ConfigError(f"admin.{k}", "unknown key (known: address)")
    from splice.config import parse_address  # splice.config imports this module

    host, port = parse_address("admin.address", v.get("address", ADMIN_ADDRESS))
    return AdminConfig(host, port)
