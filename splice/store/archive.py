"""``splice store export`` / ``import``: a store as one plain tar file.

The tar holds ``index.json`` (format version and every entry) and ``blobs/SHA`` for
each body. Import never extracts paths from the archive: it reads only those two kinds
of member, streams each blob through a ``BlobWriter`` (so it is re-hashed and must
match its name) and commits entries one by one, replacing entries with the same key.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import re
import shutil
import tarfile
import time
from typing import Any

from splice.store.blobs import is_sha
from splice.store.index import Entry
from splice.store.store import Store

ARCHIVE_VERSION = 1
#: a store key: the hex SHA-256 of the key material
_KEY = re.compile(r"[0-9a-f]{64}")
#: copy size from the tar into a blob writer
_CHUNK = 1024 * 1024
#: the times an entry may carry (seconds since the epoch): 1970 to the end of year 9999,
#: what a ``datetime`` (``store ls``) can show
LATEST = 253402300799.0


class ArchiveError(Exception):
    """The archive is not one ``export`` wrote (the message says what is wrong)."""


def export_store(store: Store, path: str) -> tuple[int, list[str]]:
    """Write every entry and its blob to ``path``; (entries written, keys skipped)."""
    written, skipped, blobs = [], [], set()
    with tarfile.open(path, "w") as tar:
        for e in store.entries():
            if e.blob not in blobs:
                try:
                    tar.add(store.blobs.path(e.blob), arcname=f"blobs/{e.blob}", recursive=False)
                except FileNotFoundError:
                    skipped.append(e.key)  # evicted meanwhile
                    continue
                blobs.add(e.blob)
            written.append(e.to_json())
        data = json.dumps({"version": ARCHIVE_VERSION, "entries": written}, indent=1).encode()
        info = tarfile.TarInfo("index.json")
        info.size, info.mtime, info.mode = len(data), int(time.time()), 0o644
        tar.addfile(info, io.BytesIO(data))
    return len(written), skipped


def import_store(store: Store, path: str) -> tuple[int, list[str]]:
    """Add the archive's entries; (entries imported, "key: problem" for those refused)."""
    try:
        tar = tarfile.open(path, "r")  # noqa: SIM115 - closed by the with below
    except (tarfile.TarError, OSError) as err:
        raise ArchiveError(f"{path}: not a readable tar file ({err})") from None
    with tar:
        members = {m.name: m for m in tar.getmembers() if m.isfile()}
        entries = _read_index(tar, members.get("index.json"))
        imported, refused = 0, []
        for e in entries:
            problem = _bad_field(e) or _import_one(store, tar, members.get(f"blobs/{e.blob}"), e)
            if problem is None:
                imported += 1
            else:
                refused.append(f"{e.key}: {problem}")
    return imported, refused


def _read_index(tar: tarfile.TarFile, member: tarfile.TarInfo | None) -> list[Entry]:
    f = None if member is None else tar.extractfile(member)
    if f is None:
        raise ArchiveError("the archive has no index.json")
    try:
        doc = json.load(f)
        if doc.get("version") != ARCHIVE_VERSION:
            raise ArchiveError(f"archive version {doc.get('version')!r} is not supported")
        return [_entry(d) for d in doc["entries"]]
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise ArchiveError(f"index.json is malformed ({e!r})") from None


def _entry(d: Any) -> Entry:
    e = Entry.from_json(d)
    if not _KEY.fullmatch(e.key) or not is_sha(e.blob):
        raise ValueError(f"bad key or blob name in {e.key!r}")
    if not isinstance(e.status, int) or not isinstance(e.request, dict):
        raise TypeError(f"bad status or request in {e.key!r}")
    return dataclasses.replace(e, used_at=time.time())


def _bad_field(e: Entry) -> str | None:
    """What is wrong with a field a hand-made archive may get wrong (``export`` never
    does): stored, a time past year 9999 made every ``store ls`` fail."""
    if not _is_number(e.recorded_at) or not 0 <= e.recorded_at <= LATEST:
        return f"recorded_at {e.recorded_at!r} is not a time"
    if type(e.status) is not int or not 100 <= e.status <= 999:
        return f"status {e.status!r} is not an HTTP status"
    if type(e.size) is not int or e.size < 0:
        return f"size {e.size!r} is not a size"
    if not all(isinstance(v, str) for v in (e.method, e.url, e.reason)):
        return "method, url and reason must be strings"
    return None


def _is_number(x: object) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def _import_one(
    store: Store, tar: tarfile.TarFile, member: tarfile.TarInfo | None, e: Entry
) -> str | None:
    f = None if member is None else tar.extractfile(member)
    if f is None:
        return "its blob is not in the archive"
    writer = store.writer()
    try:
        with f:
            shutil.copyfileobj(f, writer, _CHUNK)
        if writer.failed:
            return "its body is larger than max_bytes"
        if writer.finish() != e.blob or writer.size != e.size:
            writer.abort()
            return "its blob does not match its name (damaged archive)"
        store.commit(writer, e)
        return None
    except BaseException:
        writer.abort()
        raise
