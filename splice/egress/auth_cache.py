"""Proxy-Authorization checks that cannot be queued up: cached proofs, bounded scrypt.

scrypt costs ~50 ms of CPU and 16 MiB on purpose, so an unauthenticated client must
not be able to line up as many checks as it likes (300 bogus headers once delayed a
real login by seconds). Three defences, as production proxies have them:

- a proof is cached (``TTLCache``, 5 minutes): a returning client costs no scrypt. The
  key is a salted SHA-256 of the exact header bytes (the salt is random per process), so
  no password, nor anything a password could be tested against offline, is kept;
- concurrent checks of one header share one scrypt (a build opening many connections
  with the same credentials at once), and a malformed header costs none;
- scrypt runs in a pool of its own (``SCRYPT_THREADS``), never the event loop's default
  executor, and at most ``MAX_PENDING`` distinct checks are admitted at a time: past
  that a check is refused at once with 503 TOO_MANY_CONNECTIONS (Retry-After: 1).

Every entry names the users table it was checked against: a reload brings a new table
(``Config`` is rebuilt), and an entry for another table counts as unknown.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import secrets
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Final

from cachetools import TTLCache

from splice.egress.passwords import authenticate, parse_basic_auth
from splice.errors import SpliceError

log = logging.getLogger("splice.egress")

#: scrypt threads: CPU-bound work, so a couple (20-40 checks a second, 32 MiB) is plenty
SCRYPT_THREADS: Final = 2
#: distinct checks admitted at once, running or waiting for a thread: a waiting one
#: waits at most a few scrypt times; past this, refused at once (503) instead of queued
MAX_PENDING: Final = 4 * SCRYPT_THREADS
#: how long a proof (or a refusal) is taken on trust
PROOF_TTL: Final = 300.0
REFUSAL_TTL: Final = 30.0
#: header digests kept; refusals apart, so a flood of bad ones cannot evict the proofs
CACHE_SIZE: Final = 1024

Users = Mapping[str, str]

_SALT: Final = secrets.token_bytes(16)
#: digest -> (user, the users table it was proved against)
_proved: TTLCache[bytes, tuple[str, Users]] = TTLCache(maxsize=CACHE_SIZE, ttl=PROOF_TTL)
#: digest -> the users table it was refused by
_refused: TTLCache[bytes, Users] = TTLCache(maxsize=CACHE_SIZE, ttl=REFUSAL_TTL)
#: digest -> the check under way, and its table
_pending: dict[bytes, tuple[asyncio.Future[str | None], Users]] = {}
_pool: tuple[int, ThreadPoolExecutor] | None = None


def _digest(header: bytes) -> bytes:
    return hashlib.sha256(_SALT + header).digest()


def _executor() -> ThreadPoolExecutor:
    """This process's scrypt pool, made on first use (a forked child makes its own)."""
    global _pool
    if _pool is None or _pool[0] != os.getpid():
        _pool = (os.getpid(), ThreadPoolExecutor(SCRYPT_THREADS, "splice-scrypt"))
    return _pool[1]


def known(users: Users, header: bytes) -> str | None:
    """The user ``header`` proved to be; ``""`` if refused (lately, or malformed); None:
    unknown, to be checked with ``verify``."""
    key = _digest(header)
    proof = _proved.get(key)
    if proof is not None and proof[1] is users:
        return proof[0]
    if _refused.get(key) is users:
        return ""
    # a check that just ended is answered from itself, not from a cache that a flood
    # of refusals could have emptied meanwhile: its waiters ask here again to go on
    pending = _pending.get(key)
    if pending is not None and pending[1] is users and pending[0].done():
        return None if pending[0].cancelled() else _outcome(pending[0]) or ""
    if parse_basic_auth(header) is None:  # malformed or not Basic: no scrypt needed
        return ""
    return None


def verify(users: Users, header: bytes) -> asyncio.Future[str | None]:
    """Check ``header`` (which ``known`` did not know) off the event loop: the user it
    proves, or None. ``known`` has the outcome once the future's callbacks run. Await
    it through ``asyncio.shield``: it may be shared with other requests.

    Raises:
        SpliceError: TOO_MANY_CONNECTIONS, when ``MAX_PENDING`` checks are under way.
    """
    loop = asyncio.get_running_loop()
    key = _digest(header)
    pending = _pending.get(key)
    if pending is not None and pending[1] is users and not pending[0].done():
        return pending[0]
    if sum(not f.done() for f, _ in _pending.values()) >= MAX_PENDING:
        raise SpliceError(
            "Too many proxy logins are being checked at once; try again shortly.",
            code="TOO_MANY_CONNECTIONS",
        )
    fut = loop.run_in_executor(_executor(), authenticate, users, header)
    entry = (fut, users)
    _pending[key] = entry

    def done(f: asyncio.Future[str | None]) -> None:
        if not f.cancelled() and f.exception() is not None:
            log.error("checking proxy credentials failed", exc_info=f.exception())
        user = _outcome(f)
        if user:
            _proved[key] = (user, users)
        elif not f.cancelled():
            _refused[key] = users
        # the waiters' callbacks are queued already: forget the check after them
        loop.call_soon(_forget, key, entry)

    fut.add_done_callback(done)
    return fut


def _outcome(f: asyncio.Future[str | None]) -> str | None:
    """A finished check's user; None for a refusal (or, never expected, a failure)."""
    if f.cancelled() or f.exception() is not None:
        return None
    return f.result()


def _forget(key: bytes, entry: tuple[asyncio.Future[str | None], Users]) -> None:
    if _pending.get(key) is entry:
        del _pending[key]


def pending() -> int:
    """Checks under way, or ended with their waiters still to run (for tests)."""
    return len(_pending)
