"""``[forward.store]``: the record/replay store's settings, parsed and checked.

``parse_store_section`` takes the ``[forward.store]`` table (a dict) and returns a
frozen ``StoreSettings``; every error is a ``ConfigError`` naming its key, e.g.
``forward.store.mode``. Unknown keys are errors, as everywhere in splice's config.
``load_store_settings`` reads just that table from a config file, for the CLI.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from splice.errors import ConfigError

MODES = ("off", "record", "replay", "replay-or-forward", "record-new")
#: what a recorded exchange is looked up by unless the config says otherwise
DEFAULT_MATCH = ("method", "url", "body")
#: 10 GiB: a few sandbox builds' worth of packages on a disk a CI host can spare
DEFAULT_MAX_BYTES = 10 * 1024**3
#: a header field name (RFC 9110 token) for ``header:NAME`` match entries
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_PREFIX = "forward.store"
_KEYS = {"path", "mode", "match", "intercept_tls", "ca", "max_bytes"}


@dataclass(frozen=True, slots=True)
class StoreSettings:
    mode: str = "off"
    #: the store directory (index.sqlite3, blobs/, tmp/); None only when mode is off
    path: str | None = None
    #: "method", "url", "body" and "header:name" (lower-cased), in config order
    match: tuple[str, ...] = DEFAULT_MATCH
    intercept_tls: bool = False
    #: the CA directory (ca.pem, ca-key.pem); required with intercept_tls
    ca: str | None = None
    max_bytes: int = DEFAULT_MAX_BYTES

    @property
    def enabled(self) -> bool:
        return self.mode != "off"

    @property
    def replays(self) -> bool:
        """Hits are answered from the store (every mode but off and record)."""
        return self.mode in ("replay", "replay-or-forward", "record-new")

    @property
    def records(self) -> bool:
        return self.mode in ("record", "record-new")


def parse_store_section(data: Mapping[str, Any]) -> StoreSettings:
    """The ``[forward.store]`` table -> ``StoreSettings``. Raises ConfigError."""
    if not isinstance(data, Mapping):
        raise ConfigError(_PREFIX, "must be a table")
    for k in data:
        if k not in _KEYS:
            raise ConfigError(f"{_PREFIX}.{k}", f"unknown key (known: {', '.join(sorted(_KEYS))})")
    mode = data.get("mode", "off")
    if mode not in MODES:
        raise ConfigError(f"{_PREFIX}.mode", f"{mode!r} is not one of {', '.join(MODES)}")
    path = _opt_str("path", data.get("path"))
    if path is None and mode != "off":
        raise ConfigError(f"{_PREFIX}.path", f"is required when mode is {mode!r}")
    intercept = data.get("intercept_tls", False)
    if not isinstance(intercept, bool):
        raise ConfigError(f"{_PREFIX}.intercept_tls", "must be true or false")
    ca = _opt_str("ca", data.get("ca"))
    if intercept and ca is None:
        raise ConfigError(f"{_PREFIX}.ca", "is required when intercept_tls is true")
    return StoreSettings(
        mode=mode,
        path=path,
        match=_match(data.get("match", list(DEFAULT_MATCH))),
        intercept_tls=intercept,
        ca=ca,
        max_bytes=_max_bytes(data.get("max_bytes", DEFAULT_MAX_BYTES)),
    )


def load_store_settings(config_path: str) -> StoreSettings:
    """``[forward.store]`` of a config file (the rest of the file is not checked here)."""
    try:
        with open(config_path, "rb") as f:
            data = tomllib.load(f)
    except OSError as e:
        raise ConfigError("", f"cannot read {config_path}: {e.strerror or e}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError("", f"not valid TOML: {e}") from None
    forward = data.get("forward", {})
    if not isinstance(forward, Mapping):
        raise ConfigError("forward", "must be a table")
    return parse_store_section(forward.get("store", {}))


def _opt_str(k: str, v: Any) -> str | None:
    if v is None:
        return None
    if not isinstance(v, str) or not v:
        raise ConfigError(f"{_PREFIX}.{k}", "must be a non-empty string")
    return v


def _match(v: Any) -> tuple[str, ...]:
    key = f"{_PREFIX}.match"
    if not isinstance(v, list) or not v:
        raise ConfigError(key, "must be a non-empty list such as ['method', 'url', 'body']")
    parts: list[str] = []
    for i, part in enumerate(v):
        where = f"{key}[{i}]"
        if not isinstance(part, str):
            raise ConfigError(where, "must be a string")
        name = part.partition(":")[2] if part.lower().startswith("header:") else None
        if name is not None:
            if not _TOKEN.fullmatch(name):
                raise ConfigError(where, f"{part!r}: {name!r} is not a header field name")
            part = "header:" + name.lower()
        elif part not in DEFAULT_MATCH:
            raise ConfigError(where, f"{part!r} is not method, url, body or header:NAME")
        if part in parts:
            raise ConfigError(where, f"{part!r} is listed twice")
        parts.append(part)
    return tuple(parts)


def _max_bytes(v: Any) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
        raise ConfigError(f"{_PREFIX}.max_bytes", f"{v!r} must be a positive number of bytes")
    return v
