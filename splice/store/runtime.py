"""What the proxy keeps for the record/replay store while it runs: one per process.

``StoreRuntime.open(settings, trust_bundle=...)`` opens the store (recovering from a
crash: stale temp files and pins go), loads the CA when ``intercept_tls`` is on, and
builds the upstream TLS context. Index work and fsyncs run on a small thread pool
(SQLite may wait on another worker's lock; the event loop must not), and whatever was
started there finishes even when the connection is cancelled, so no file or pin leaks.
The exception is the common case, a hit on a small body: ``Store.peek`` serves it on the
loop's thread (a read-only connection that never waits; a thread hop cost more than
the lookup), and its LRU stamp goes to the pool with others once a second.
``flights`` is the single-flight table: (key, credentials) -> the recording in progress,
whose result is the entry it stored (None: nothing). The key leaves out Authorization
and Cookie, so only requests that bear the same ones may share a recording.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ssl
import time
from concurrent.futures import Future, ThreadPoolExecutor

from splice.ca import CaError, CertificateAuthority
from splice.errors import ConfigError
from splice.store.blobs import BlobWriter
from splice.store.index import Entry
from splice.store.settings import StoreSettings
from splice.store.store import Replay, Store

#: a request's Authorization and Cookie fields (lower-case names), in order
Credentials = tuple[tuple[bytes, bytes], ...]
#: store threads: a long fsync of one recording must not hold up replays (the
#: Store's lock serialises index work; fsyncs run side by side)
POOL = 4
#: seconds the LRU stamps of small hits wait before a store thread writes them; a crash
#: loses at most that much LRU order, never an entry
TOUCH_EVERY = 1.0


def upstream_context(trust_bundle: str | None = None) -> ssl.SSLContext:
    """Verification of origins: the system trust store, or only ``trust_bundle``."""
    try:
        ctx = ssl.create_default_context(cafile=trust_bundle)
    except (OSError, ssl.SSLError) as e:
        raise ConfigError("forward.trust_bundle", f"cannot be loaded: {e}") from None
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


class StoreRuntime:
    def __init__(
        self,
        settings: StoreSettings,
        store: Store,
        *,
        ca: CertificateAuthority | None = None,
        upstream_tls: ssl.SSLContext | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.ca = ca
        self.upstream_tls = upstream_tls or upstream_context()
        self.flights: dict[tuple[str, Credentials], asyncio.Future[Entry | None]] = {}
        self._pool = ThreadPoolExecutor(max_workers=POOL, thread_name_prefix="splice-store")
        #: LRU stamps of hits served by ``peek``, handed to the pool every TOUCH_EVERY s
        self._stamps: dict[str, float] = {}
        self._stamped_at = time.monotonic()

    @classmethod
    def open(cls, settings: StoreSettings, *, trust_bundle: str | None = None) -> StoreRuntime:
        """Raises ConfigError (naming the key) when the store or CA cannot be used."""
        assert settings.path is not None, "parse_store_section requires a path when on"
        try:
            store = Store(settings.path, settings.max_bytes)
            store.recover()
        except OSError as e:
            raise ConfigError("forward.store.path", f"cannot be used: {e}") from None
        ca = None
        if settings.intercept_tls:
            assert settings.ca is not None
            try:
                ca = CertificateAuthority.load(settings.ca)
            except CaError as e:
                raise ConfigError("forward.store.ca", str(e)) from None
        return cls(settings, store, ca=ca, upstream_tls=upstream_context(trust_bundle))

    def close(self) -> None:
        self._stamp()
        self._pool.shutdown(wait=True)  # commits, unpins and stamps in flight finish first
        self.store.close()

    async def open_replay(self, key: str) -> Replay | None:
        """A small hit at once from this thread (``Store.peek``); the rest on the pool."""
        rep = self.store.peek(key)
        if rep is not None:
            now = time.monotonic()
            self._stamps[key] = time.time()
            if now - self._stamped_at >= TOUCH_EVERY:
                self._stamped_at = now
                self._stamp()
            return rep
        job = self._pool.submit(self.store.open_replay, key)
        try:
            return await asyncio.wrap_future(job)
        except asyncio.CancelledError:
            job.add_done_callback(self._drop_unclaimed)  # it may still open and pin
            raise

    def _stamp(self) -> None:
        """Hand the stamps of ``peek`` hits to a store thread (writing them may wait)."""
        if self._stamps:
            stamps, self._stamps = self._stamps, {}
            self._pool.submit(self.store.stamp, stamps)

    def _drop_unclaimed(self, job: Future[Replay | None]) -> None:
        if not job.cancelled() and job.exception() is None:
            replay = job.result()
            if replay is not None:
                self.store.close_replay(replay)

    def close_replay(self, replay: Replay) -> None:
        """Close at once; an unpin is queued (it must happen even if we are cancelled)."""
        if replay.file is not None:
            replay.file.close()
        if replay.token:
            self._pool.submit(self.store.unpin, replay.token)

    async def commit(self, writer: BlobWriter, entry: Entry) -> None:
        """fsync, install the blob and ``entry`` naming it: one job, run to its end even
        if the caller is cancelled (the writer belongs to the job from here on)."""
        writer.committing = True
        job = self._pool.submit(self._commit, writer, entry)
        await asyncio.shield(asyncio.wrap_future(job))

    def _commit(self, writer: BlobWriter, entry: Entry) -> None:
        try:
            sha = writer.finish()
            self.store.commit(writer, dataclasses.replace(entry, blob=sha, size=writer.size))
        except BaseException:
            writer.abort(force=True)
            raise
