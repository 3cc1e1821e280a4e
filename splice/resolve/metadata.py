"""Resolver that reads shed-server's Firecracker instance files: ``DIR/NAME/metadata.json``.

No file (or no directory) -> None: not a shed this source knows. ``status`` running ->
Endpoint(``ip_address``, or None when absent); any other status -> SHED_NOT_RUNNING.
A file that cannot be read or parsed -> BackendError RESOLVER_UNAVAILABLE and one
warning on ``splice.resolve`` naming the file (once per version of the file, never a crash).
The file is parsed again only when its (mtime_ns, size, inode) changes; a stat per lookup.
Choice: ``synchronous = False`` with the read done inline in ``resolve`` (no thread): the
file is local and tiny, a stat plus a page-cache read costs less than a thread hop, and the
chain's cache means this runs at most once per TTL per shed.
"""

from __future__ import annotations

import json
import logging
import os
from typing import NamedTuple, NoReturn

from cachetools import LRUCache

from splice.errors import SpliceError
from splice.resolve._shed import is_shed_name, not_running, running_address, unavailable
from splice.resolve.base import Endpoint
from splice.resolve.cache import copy_error

log = logging.getLogger("splice.resolve")

#: real metadata.json files are under 1 KiB; anything this big is not one
MAX_FILE = 64 * 1024
#: parsed files remembered (one per shed); names come from requests, so bound them
MAX_REMEMBERED = 4096


class _Seen(NamedTuple):
    sig: tuple[int, int, int]
    outcome: Endpoint | SpliceError


class MetadataResolver:
    kind = "metadata"
    synchronous = False

    def __init__(self, instances_dir: str) -> None:
        self._dir = instances_dir
        self._seen: LRUCache[str, _Seen] = LRUCache(MAX_REMEMBERED)
        #: times a file was (re)parsed, for tests and /routes
        self.reads = 0

    def lookup_now(self, shed: str) -> Endpoint | None:
        return None

    async def resolve(self, shed: str) -> Endpoint | None:
        return self.read(shed)

    async def close(self) -> None:
        self._seen.clear()

    def read(self, shed: str) -> Endpoint | None:
        """The answer from ``shed``'s metadata.json, synchronously (stat, maybe a read)."""
        if not is_shed_name(shed):
            return None  # never a shed-server instance; also keeps "../x" out of paths
        path = os.path.join(self._dir, shed, "metadata.json")
        try:
            st = os.stat(path)
        except (FileNotFoundError, NotADirectoryError):
            self._seen.pop(shed, None)
            return None
        except OSError as e:
            self._unreadable(shed, path, f"cannot stat: {e.strerror}")
        sig = (st.st_mtime_ns, st.st_size, st.st_ino)
        seen = self._seen.get(shed)
        if seen is None or seen.sig != sig:
            seen = _Seen(sig, self._load(shed, path))
            self._seen[shed] = seen
        if isinstance(seen.outcome, SpliceError):
            raise copy_error(seen.outcome)
        return seen.outcome

    def _load(self, shed: str, path: str) -> Endpoint | SpliceError:
        self.reads += 1
        try:
            with open(path, "rb") as f:
                raw = f.read(MAX_FILE + 1)
            if len(raw) > MAX_FILE:
                raise ValueError(f"larger than {MAX_FILE} bytes")
            doc = json.loads(raw)
            if not isinstance(doc, dict) or not isinstance(doc.get("status"), str):
                raise ValueError("not an object with a string status")
            if doc["status"] != "running":
                return not_running(shed, doc["status"])
            address = running_address(doc, "metadata")
        except FileNotFoundError:
            return unavailable(shed, f"The metadata of shed {shed!r} vanished while read.")
        except (OSError, ValueError, RecursionError) as e:
            why = e.strerror if isinstance(e, OSError) else str(e) or type(e).__name__
            log.warning(
                "instance metadata %s is malformed: %s; shed %r unavailable", path, why, shed
            )
            return unavailable(shed, f"The metadata of shed {shed!r} cannot be read.")
        return Endpoint(shed=shed, address=address, status="running", source=self.kind)

    def _unreadable(self, shed: str, path: str, why: str) -> NoReturn:
        log.warning("instance metadata %s: %s; shed %r unavailable", path, why, shed)
        raise unavailable(shed, f"The metadata of shed {shed!r} cannot be read.")
