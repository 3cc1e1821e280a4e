"""Proxy credential checks: cached proofs, one scrypt per header at a time, bounded work.

Each test uses users tables of its own: entries are tied to a table's identity, so what
other tests left in the process-wide caches can never answer here.
"""

from __future__ import annotations

import asyncio
import base64
import threading
import time

import pytest

from splice.egress import auth_cache
from splice.egress.passwords import hash_password
from splice.errors import SpliceError

PASSWORD = "s3cret horse"
HASH = hash_password(PASSWORD)


def basic(user: str, password: str) -> bytes:
    return b"Basic " + base64.b64encode(f"{user}:{password}".encode())


async def check(users: dict[str, str], header: bytes) -> str | None:
    """What a request does: the cache, else one (shared, bounded) scrypt."""
    known = auth_cache.known(users, header)
    if known is None:
        known = await asyncio.shield(auth_cache.verify(users, header))
    return known or None


def test_a_proof_is_cached_and_costs_no_scrypt_the_second_time() -> None:
    users = {"alice": HASH}
    header = basic("alice", PASSWORD)
    assert auth_cache.known(users, header) is None
    assert asyncio.run(check(users, header)) == "alice"
    t0 = time.perf_counter()
    assert auth_cache.known(users, header) == "alice"
    assert time.perf_counter() - t0 < 0.005  # no scrypt (~50 ms) on the way


def test_a_refusal_is_remembered_and_a_malformed_header_costs_nothing() -> None:
    users = {"alice": HASH}
    wrong = basic("alice", "nope")
    assert asyncio.run(check(users, wrong)) is None
    assert auth_cache.known(users, wrong) == ""
    for malformed in (b"Bearer abc", b"Basic !!!", b"Basic " + base64.b64encode(b"nocolon")):
        assert auth_cache.known(users, malformed) == ""


def test_the_caches_hold_no_credential_bytes() -> None:
    """Keys are salted SHA-256 digests: neither the header nor the password is kept."""
    users = {"alice": HASH}
    header = basic("alice", PASSWORD)
    asyncio.run(check(users, header))
    asyncio.run(check(users, basic("alice", "wrong-" + PASSWORD)))
    keys = list(auth_cache._proved) + list(auth_cache._refused)
    assert keys and all(isinstance(k, bytes) and len(k) == 32 for k in keys)
    secret = PASSWORD.encode()
    assert not any(header in k or secret in k or base64.b64encode(secret) in k for k in keys)
    for user, table in auth_cache._proved.values():
        assert user in table  # a user name and its table: no password


def test_a_new_users_table_makes_every_entry_unknown() -> None:
    """A reload builds a new table: what the old one proved counts for nothing."""
    old = {"alice": HASH}
    header = basic("alice", PASSWORD)
    assert asyncio.run(check(old, header)) == "alice"
    new = {"alice": hash_password("another")}
    assert auth_cache.known(new, header) is None
    assert asyncio.run(check(new, header)) is None
    assert auth_cache.known(new, header) == ""


def test_concurrent_checks_of_one_header_share_one_scrypt() -> None:
    users = {"alice": HASH}
    header = basic("alice", PASSWORD)

    async def many() -> list[str | None]:
        futures = [auth_cache.verify(users, header) for _ in range(20)]
        assert len({id(f) for f in futures}) == 1 and auth_cache.pending() == 1
        return await asyncio.gather(*(asyncio.shield(f) for f in futures))

    assert asyncio.run(many()) == ["alice"] * 20


def test_past_max_pending_checks_a_new_one_is_refused_at_once() -> None:
    """Bogus credentials cannot queue scrypt work: past MAX_PENDING distinct checks in
    flight a check is refused at once (503 TOO_MANY_CONNECTIONS), and a header already
    proved is still answered from the cache."""
    users = {"alice": HASH}
    proved = basic("alice", PASSWORD)
    assert asyncio.run(check(users, proved)) == "alice"

    async def flood() -> tuple[int, float]:
        bogus = [auth_cache.verify(users, basic("mallory", str(i)))
                 for i in range(auth_cache.MAX_PENDING)]  # fmt: skip
        t0 = time.perf_counter()
        refused = 0
        for i in range(100):
            try:
                bogus.append(auth_cache.verify(users, basic("eve", str(i))))
            except SpliceError as e:
                assert (e.status, e.code) == (503, "TOO_MANY_CONNECTIONS")
                refused += 1
        took = time.perf_counter() - t0
        assert auth_cache.known(users, proved) == "alice"  # during the flood
        await asyncio.gather(*bogus)
        return refused, took

    refused, took = asyncio.run(flood())
    assert refused == 100 and took < 0.05, (refused, took)
    assert auth_cache.pending() == 0


def test_scrypt_runs_beside_the_default_executor_never_in_it() -> None:
    """The checks have a pool of their own, SCRYPT_THREADS wide: the loop's default
    executor (asyncio.to_thread) is never starved by them."""
    users = {"alice": HASH}
    names: set[str] = set()

    async def run() -> None:
        futures = [auth_cache.verify(users, basic("m", str(i))) for i in range(4)]
        await asyncio.gather(*futures)
        names.update(t.name for t in threading.enumerate())

    asyncio.run(run())
    scrypt = [n for n in names if n.startswith("splice-scrypt")]
    assert 1 <= len(scrypt) <= auth_cache.SCRYPT_THREADS


@pytest.mark.parametrize("header", [b"", b"Basic", b"Basic " + b"A" * 5000])
def test_headers_that_cannot_be_credentials_are_refused_without_a_check(header: bytes) -> None:
    users = {"alice": HASH}
    assert auth_cache.known(users, header) == ""
    assert auth_cache.pending() == 0
