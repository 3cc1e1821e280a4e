"""Declared ports: ``DIR/NAME.json`` = ``[{"port": 3000, "label": "web"}, ...]``.

``ports(shed)`` is synchronous (hot path): None when there is no file (the shed declares
nothing, so its policy stays open), else the declarations in file order. The file is
stat-ed at most once per ``interval`` seconds per shed and parsed again only when its
(mtime_ns, size, inode) changes. A malformed file fails closed: ``FAIL_CLOSED`` (one
entry, port 0, which no request can name) so ``ShedPolicy`` exposes only the default and
TLS ports, and one warning on ``splice.resolve`` names the file (once per version).
An empty list ``[]`` is valid and declares nothing, which ShedPolicy reads as "all open".
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from collections.abc import Callable
from typing import NamedTuple

from cachetools import LRUCache

from splice.resolve._shed import is_shed_name
from splice.routing.policy import DeclaredPort

log = logging.getLogger("splice.resolve")

#: what a malformed file means: a non-empty list no explicit port can match (ports are
#: 1..65535), so only the shed's default and TLS ports stay reachable
FAIL_CLOSED: tuple[DeclaredPort, ...] = (DeclaredPort(port=0, label="declared ports unreadable"),)
#: a declaration file lists a handful of ports; anything this big is not one
MAX_FILE = 64 * 1024
#: labels are shown on the PORT_NOT_EXPOSED page; longer ones are cut
MAX_LABEL = 64
#: sheds remembered; names come from requests, so bound them
MAX_REMEMBERED = 4096
#: the "version" of a file that exists but cannot be stat-ed (EACCES...): fails closed
_UNREADABLE = (-1, -1, -1)
#: control characters never reach a page
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class _Entry(NamedTuple):
    checked: float
    sig: tuple[int, int, int] | None
    ports: tuple[DeclaredPort, ...] | None


class DeclaredPorts:
    def __init__(
        self,
        directory: str,
        *,
        interval: float = 1.0,
        timer: Callable[[], float] = time.monotonic,
    ) -> None:
        self._dir = directory
        #: how stale a "did the file change?" answer may be; one stat per shed per interval
        self._interval = interval
        self._timer = timer
        self._seen: LRUCache[str, _Entry] = LRUCache(MAX_REMEMBERED)
        #: files parsed so far, for tests
        self.reads = 0

    def ports(self, shed: str) -> tuple[DeclaredPort, ...] | None:
        """The ports ``shed`` declares; None when it has no declaration file."""
        if not is_shed_name(shed):
            return None  # also keeps "../x" out of paths
        now = self._timer()
        entry = self._seen.get(shed)
        if entry is not None and now - entry.checked < self._interval:
            return entry.ports
        path = os.path.join(self._dir, f"{shed}.json")
        try:
            sig = _stat(path)
        except OSError as e:
            sig = _UNREADABLE
            if entry is None or entry.sig != sig:
                log.warning("declared ports %s: %s; only default ports exposed", path, e.strerror)
        if entry is not None and sig == entry.sig:
            ports = entry.ports
        elif sig == _UNREADABLE:
            ports = FAIL_CLOSED
        else:
            ports = None if sig is None else self._load(path)
        self._seen[shed] = _Entry(now, sig, ports)
        return ports

    def _load(self, path: str) -> tuple[DeclaredPort, ...]:
        self.reads += 1
        try:
            with open(path, "rb") as f:
                raw = f.read(MAX_FILE + 1)
            if len(raw) > MAX_FILE:
                raise ValueError(f"larger than {MAX_FILE} bytes")
            return _parse(json.loads(raw))
        except (OSError, ValueError, RecursionError) as e:
            why = e.strerror if isinstance(e, OSError) else str(e) or type(e).__name__
            log.warning(
                "declared ports %s are malformed (%s); only default ports exposed", path, why
            )
            return FAIL_CLOSED


def _stat(path: str) -> tuple[int, int, int] | None:
    """The file's version, or None when there is no file; other errors raise OSError."""
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


def _parse(doc: object) -> tuple[DeclaredPort, ...]:
    if not isinstance(doc, list):
        raise ValueError("not a JSON list")
    out = []
    for i, item in enumerate(doc):
        port = item.get("port") if isinstance(item, dict) else None
        if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
            raise ValueError(f"entry {i}: port must be an integer 1..65535")
        label = item.get("label", "")
        if not isinstance(label, str):
            raise ValueError(f"entry {i}: label must be a string")
        out.append(DeclaredPort(port=port, label=_CONTROL.sub("", label)[:MAX_LABEL]))
    return tuple(out)
