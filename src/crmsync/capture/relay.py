"""The relay: outbox rows -> per-connection Redis queues, nothing lost, nothing twice.

Each batch is one PostgreSQL transaction: delete the oldest rows nobody else
holds (``FOR UPDATE SKIP LOCKED``, so any number of relays share the outbox),
queue one entry per (connection of the row's tenant, contact), and commit only
after Redis answered, so the delete becomes real only then. If Redis fails the
transaction rolls back and the rows wait for the next try; if the commit fails
after the enqueue, the rows are queued again later, which the queue coalesces.

The relay wakes on ``NOTIFY crmsync_outbox`` (sent once per writing statement)
and polls every ``relay_poll_seconds`` in case a notification was missed.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Mapping, Sequence
from typing import Any

import asyncpg
import structlog

from crmsync import db
from crmsync.capture.reconcile import reconcile_connection
from crmsync.counters import ProcessCounts
from crmsync.queue.store import Band, QueueStore
from crmsync.redis_client import REDIS_ERRORS, RedisClient
from crmsync.settings import Settings

log = structlog.get_logger(__name__)

OUTBOX_CHANNEL = "crmsync_outbox"
CONNECTIONS_CHANNEL = "crmsync_connections"
CONNECTIONS_MAX_AGE = 5.0  # seconds a cached tenant -> connections map is trusted
VACUUM_AFTER_ROWS = 50_000  # rows moved (deleted from the outbox) before the relay vacuums it
ERRORS: tuple[type[Exception], ...] = (*REDIS_ERRORS, asyncpg.PostgresError, asyncpg.InterfaceError)

BANDS = {"insert": int(Band.CREATE), "update": int(Band.UPDATE), "delete": int(Band.DELETE)}
_NONE = int(Band.DELETE) + 1

# moved: outbox rows moved to the queues; enqueued: queue entries written (rows x
# connections); batches. Pushed to Redis, exported by the API's /metrics.
COUNTS = ProcessCounts("relay")

Tenants = Mapping[str, Sequence[str]]  # tenant -> connection ids


async def load_tenants(pool: asyncpg.Pool[Any]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for r in await pool.fetch(db.q("relay_connections")):
        out.setdefault(r["tenant"], []).append(r["id"])
    return out


def fan_out(rows: Sequence[Sequence[Any]], tenants: Tenants) -> list[tuple[str, str, int]]:
    """One (connection, contact, band) per connection of the tenant and contact.

    A contact seen several times in one batch keeps its most urgent band; the
    worker syncs its current state whatever the band.
    """
    best: dict[tuple[str, str], int] = {}
    for tenant, contact_id, op in rows:  # the columns of relay_take, in order
        key = (tenant, contact_id)
        band = BANDS[op]
        if band < best.get(key, _NONE):
            best[key] = band
    return [
        (cid, contact_id, band)
        for (tenant, contact_id), band in best.items()
        for cid in tenants.get(tenant, ())
    ]


class LossWatch:
    """Notices a Redis that lost a connection's state through the relay's own
    writes: a connection whose queue carried a lineage marker and no longer does.
    The enqueue already woke its workers (whose claim heals it); this says so."""

    def __init__(self) -> None:
        self.marked: set[str] = set()

    def saw(self, connections: set[str], unmarked: set[str]) -> list[str]:
        """The connections just seen to have lost their marker."""
        lost = sorted(c for c in unmarked if c in self.marked)
        self.marked.difference_update(unmarked)
        self.marked.update(connections - unmarked)
        for cid in lost:
            log.warning("redis.lost", connection=cid, seen_by="relay")
        COUNTS.add(redis_losses_seen=len(lost))
        return lost


async def relay_once(
    pool: asyncpg.Pool[Any],
    store: QueueStore,
    batch: int,
    tenants: Tenants | None = None,
    losses: LossWatch | None = None,
) -> int:
    """Move one batch; returns the outbox rows handled (0: nothing was waiting).

    ``tenants`` is the relay's cached connection map; without it the
    connections are read first. Rows of tenants without a
    connection are dropped: a connection added later is backfilled by reconcile.
    """
    if tenants is None:
        tenants = await load_tenants(pool)
    async with pool.acquire() as conn, conn.transaction():
        rows = await conn.fetch(db.q("relay_take"), batch)
        if not rows:
            return 0
        items = fan_out(rows, tenants)
        if items:
            # Deleted from the outbox only once this answered (the commit below).
            unmarked = await store.enqueue(items)
            if losses is not None:
                losses.saw({cid for cid, _, _ in items}, unmarked)
    COUNTS.add(moved=len(rows), enqueued=len(items), batches=1)
    return len(rows)


class TenantCache:
    """The tenant -> connections map, refreshed on NOTIFY crmsync_connections or when old."""

    def __init__(self, max_age: float = CONNECTIONS_MAX_AGE) -> None:
        self.max_age = max_age
        self.tenants: dict[str, list[str]] = {}
        self.known: set[str] | None = None
        self.loaded_at = float("-inf")
        self.dirty = True

    def forget(self, connection_id: str) -> None:
        """Treat the connection as new again (its backfill failed: retry it)."""
        if self.known is not None:
            self.known.discard(connection_id)
        self.dirty = True

    async def get(
        self, pool: asyncpg.Pool[Any]
    ) -> tuple[dict[str, list[str]], list[tuple[str, str]]]:
        """The map, and the (connection, tenant) pairs that appeared since the last load."""
        if not self.dirty and time.monotonic() - self.loaded_at < self.max_age:
            return self.tenants, []
        self.dirty = False
        fresh = await load_tenants(pool)
        self.loaded_at = time.monotonic()
        ids = {cid: t for t, cids in fresh.items() for cid in cids}
        if self.known is None:
            # First load: backfill only connections that never synced anything
            # (added while no relay ran); the others are `crmsync reconcile`'s job.
            rows = await pool.fetch(db.q("relay_unsynced_connections"))
            new = [(r["id"], r["tenant"]) for r in rows]
        else:
            new = [(c, t) for c, t in ids.items() if c not in self.known]
        self.known = set(ids)
        self.tenants = fresh
        return fresh, sorted(new)


async def run_relay(
    settings: Settings,
    *,
    stop: asyncio.Event | None = None,
    batch: int | None = None,
    poll_seconds: float | None = None,
    vacuum_after: int = VACUUM_AFTER_ROWS,
) -> None:
    """Relay until ``stop`` is set: drain on every wake-up, poll as a fallback;
    vacuum the outbox in the background after every ``vacuum_after`` rows moved."""
    from crmsync.redis_client import redis_of

    stop = stop or asyncio.Event()
    batch = batch or settings.relay_batch
    poll = poll_seconds or settings.relay_poll_seconds
    pool = await db.create_pool(settings.database_url, min_size=1, max_size=4)
    try:
        redis = await redis_of(settings)
    except BaseException:
        await pool.close()
        raise
    store = QueueStore(redis, margin=settings.limit_margin)
    wake = asyncio.Event()
    cache = TenantCache()
    losses = LossWatch()
    backfills: set[asyncio.Task[int]] = set()
    vacuum: asyncio.Task[None] | None = None
    moved = 0  # since the last vacuum started

    def on_notify(_conn: object, _pid: int, channel: str, _payload: str) -> None:
        if channel == CONNECTIONS_CHANNEL:
            cache.dirty = True
        wake.set()

    listener: asyncpg.Connection[Any] | None = None
    log.info("relay.started", batch=batch, poll_seconds=poll)
    try:
        while not stop.is_set():
            if listener is None or listener.is_closed():
                listener = await _listen(settings.database_url, on_notify)
            wake.clear()
            try:
                tenants, new = await cache.get(pool)
                for cid, tenant in new:
                    # A new connection needs every existing contact of its tenant.
                    task = asyncio.create_task(reconcile_connection(pool, store, cid, tenant))
                    backfills.add(task)
                    task.add_done_callback(_backfill_done(backfills, cache, cid))
                while not stop.is_set() and (
                    n := await relay_once(pool, store, batch, tenants, losses)
                ):
                    moved += n
                    await _push_counts(redis)  # at most once a second under load
                await _push_counts(redis)
                if moved >= vacuum_after and (vacuum is None or vacuum.done()):
                    moved = 0
                    vacuum = asyncio.create_task(_vacuum_outbox(pool))
            except ERRORS as exc:
                cache.dirty = True
                log.warning("relay.batch_failed", error=str(exc))
            await _wait(stop, wake, poll)
    finally:
        await _push_counts(redis, force=True)
        if vacuum is not None:
            vacuum.cancel()
            with contextlib.suppress(asyncio.CancelledError, *ERRORS):
                await vacuum
        for task in backfills:
            task.cancel()
        if backfills:
            await asyncio.gather(*backfills, return_exceptions=True)
        if listener is not None:
            with contextlib.suppress(Exception):
                await listener.close()
        await redis.aclose()
        await pool.close()
        log.info("relay.stopped")


async def _push_counts(redis: RedisClient, *, force: bool = False) -> None:
    try:
        await COUNTS.push(redis, force=force)
    except REDIS_ERRORS as exc:  # kept for the next push
        log.warning("relay.counts_push_failed", error=str(exc))


async def _vacuum_outbox(pool: asyncpg.Pool[Any]) -> None:
    t0 = time.monotonic()
    try:
        await pool.execute(db.q("relay_vacuum_outbox"))
    except ERRORS as exc:  # autovacuum will do it later
        log.warning("relay.vacuum_failed", error=str(exc))
        return
    log.info("relay.vacuumed_outbox", seconds=round(time.monotonic() - t0, 2))


async def _listen(dsn: str, callback: Any) -> asyncpg.Connection[Any] | None:
    """A dedicated LISTEN connection; None (polling only) if it cannot be had now."""
    try:
        conn = await db.connect(dsn)
        await conn.add_listener(OUTBOX_CHANNEL, callback)
        await conn.add_listener(CONNECTIONS_CHANNEL, callback)
        return conn
    except Exception as exc:
        log.warning("relay.listen_failed", error=str(exc))
        return None


def _backfill_done(tasks: set[asyncio.Task[int]], cache: TenantCache, cid: str) -> Any:
    def done(task: asyncio.Task[int]) -> None:
        tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            cache.forget(cid)
            log.warning("relay.backfill_failed", connection=cid, error=str(task.exception()))

    return done


async def _wait(stop: asyncio.Event, wake: asyncio.Event, seconds: float) -> None:
    waiters = {asyncio.ensure_future(stop.wait()), asyncio.ensure_future(wake.wait())}
    try:
        await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waiters:
            w.cancel()
