"""A Redis that lost a connection's state is noticed and rebuilt, once, by one worker.

Redis is a cache of work and of the limiter's counts; PostgreSQL holds the
truth. Each connection's Redis state hash carries a *lineage* marker, a random
run id also recorded in ``redis_state``. The claim script checks it before
anything else (``claim.lua``): no marker (a FLUSHALL, a restart without
persistence, a failover that lost the connection's slot) or another one (an
older Redis) refuses the claim, and the worker heals:

1. takes the connection's heal lock (``SET NX PX``): one healer cluster-wide;
   the others retry their claim a moment later;
2. re-reads marker and ``redis_state`` under the lock: someone else may have
   healed already, then the worker adopts the marker;
3. rebuilds the queue from PostgreSQL (``reconcile_connection``: contacts whose
   version is ahead of the ledger, deletes the CRM may still hold);
4. refills the rate windows (``ratelimit.prefill``): windows up to 10 s are
   counted full for one span, longer ones hold their PostgreSQL checkpoint plus
   what they may have admitted since it, so no connection sends over a limit;
5. records a new lineage in PostgreSQL, then writes it with the windows in one
   script (``heal.lua``): claims pass again.

A connection that never had a marker (new, or from before markers) is marked
without a rebuild. Every ``CHECK_SECONDS`` each worker also looks at the markers
of its connections (a loss on an idle connection is healed without waiting for
work) and copies the long windows' buckets to ``rate_checkpoints``, one worker
per connection at a time (a lock of the same period), off the claim path.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import Callable, Iterable
from typing import Any

import asyncpg

from crmsync import db
from crmsync.capture.reconcile import reconcile_connection
from crmsync.connections import Connection
from crmsync.logs import get_logger
from crmsync.queue import keys
from crmsync.queue.store import QueueStore
from crmsync.ratelimit import SHORT_WINDOW_MS, prefill
from crmsync.redis_client import REDIS_ERRORS
from crmsync.worker.ledger import DB_ERRORS

log = get_logger(__name__)
# A watch pass that meets one of these tries again at the next.
_WATCH_ERRORS: tuple[type[Exception], ...] = (*REDIS_ERRORS, *DB_ERRORS)

LOSS_REFUSALS = (
    "lost",
    "lineage",
)  # what claim.lua answers when the marker is not the one expected
HEAL_LOCK_MS = 120_000  # the longest a heal may take before another worker may start one
HEAL_RETRY_MS = 200  # a claim that met a loss tries again this soon
CHECK_SECONDS = 2.0  # markers looked at, long windows copied to PostgreSQL, this often
ANY = "*"  # claim.lua: any marker will do (no lineage recorded yet)


class Healer:
    """Lineage markers, heals and rate checkpoints of one worker process."""

    def __init__(
        self,
        pool: asyncpg.Pool[Any],
        store: QueueStore,
        *,
        margin: float,
        check_seconds: float = CHECK_SECONDS,
    ) -> None:
        self.pool = pool
        self.store = store
        self.redis = store.redis
        self.margin = margin
        self.check_seconds = check_seconds
        self.known: dict[str, str] = {}  # connection id -> lineage recorded in PostgreSQL
        self.heals = 0  # heals this process did

    def lineage(self, connection_id: str) -> str:
        """What the claim script must find in the connection's state."""
        return self.known.get(connection_id, ANY)

    async def load(self) -> None:
        rows = await self.pool.fetch(db.q("heal_lineages"), None)
        self.known = {r["connection_id"]: r["lineage"] for r in rows}

    async def heal(self, conn: Connection) -> bool:
        """Heal the connection's Redis state unless it is healthy after all or
        another worker is healing it; True when its claims may pass now."""
        ck = keys.connection(conn.id)
        token = secrets.token_hex(8)
        if not await self.redis.set(ck.heal_lock, token, nx=True, px=HEAL_LOCK_MS):
            return False
        try:
            row = await self.pool.fetchrow(db.q("heal_lineages"), conn.id)
            recorded: str | None = row["lineage"] if row is not None else None
            marker = await self.store.lineage(conn.id)
            if marker is not None and marker == recorded:
                self.known[conn.id] = marker  # healed by another worker meanwhile
                return True
            if recorded is None:
                await self._first_mark(conn, marker)
                return True
            await self._rebuild(conn, marker)
            return True
        finally:
            with contextlib.suppress(*REDIS_ERRORS):
                if await self.redis.get(ck.heal_lock) == token.encode():
                    await self.redis.delete(ck.heal_lock)

    async def _first_mark(self, conn: Connection, marker: str | None) -> None:
        """A connection without a recorded lineage: its Redis state was never
        lost since markers exist; record (PostgreSQL first) and mark it."""
        lineage = marker or secrets.token_hex(8)
        await self.pool.execute(db.q("heal_record"), conn.id, lineage, False)
        if marker is None:
            await self.store.mark(conn.id, lineage)
        self.known[conn.id] = lineage

    async def _rebuild(self, conn: Connection, marker: str | None) -> None:
        log.warning(
            "redis.lost",
            connection=conn.id,
            crm=conn.crm,
            tenant=conn.tenant,
            why="no lineage marker" if marker is None else "another lineage marker",
        )
        windows = await self.store.enforced_windows(conn.id)
        checkpoint: dict[int, tuple[int, dict[int, int]]] = {}
        for r in await self.pool.fetch(db.q("heal_checkpoints"), conn.id):
            buckets = {int(k): int(v) for k, v in dict(r["buckets"]).items()}
            checkpoint[int(r["window_ms"])] = (int(r["taken_ms"]), buckets)
        queued = await reconcile_connection(self.pool, self.store, conn.id, conn.tenant)
        # Redis time of the connection's own node (a cluster's nodes each have one).
        _, now_ms, _ = await self.store.snapshot(conn.id, [])
        fills = prefill(windows, checkpoint, now_ms, self.margin)
        lineage = secrets.token_hex(8)
        # PostgreSQL first: a crash before the marker is written only heals again.
        await self.pool.execute(db.q("heal_record"), conn.id, lineage, True)
        await self.store.heal(conn.id, lineage, fills)
        self.known[conn.id] = lineage
        self.heals += 1
        log.warning(
            "redis.healed",
            connection=conn.id,
            queued=queued,
            windows={f.window.window_ms: sum(f.buckets.values()) + f.fill for f in fills},
        )

    # -- the periodic look -------------------------------------------------------

    async def watch(
        self,
        stop: asyncio.Event,
        connections: Callable[[], Iterable[Connection]],
        wake: Callable[[list[str]], None],
    ) -> None:
        """Until ``stop``: every ``check_seconds``, wake the connections whose
        marker is missing or not the known one (their claim heals them), and
        copy the long windows to PostgreSQL."""
        while not stop.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), self.check_seconds)
            if stop.is_set():
                return
            try:
                conns = list(connections())
                wake(await self.unmarked(conns))
                for conn in conns:
                    await self.checkpoint(conn)
            except _WATCH_ERRORS as exc:
                log.warning("redis.check_failed", error=str(exc))

    async def unmarked(self, conns: list[Connection]) -> list[str]:
        """The connections whose Redis state lacks the marker this worker expects."""
        if not conns:
            return []
        markers = await self.store.markers([c.id for c in conns])
        out = []
        for c, m in zip(conns, markers, strict=True):
            want = self.lineage(c.id)
            if m is None or (want != ANY and m != want):
                out.append(c.id)
        return out

    async def checkpoint(self, conn: Connection) -> bool:
        """Copy the connection's long windows to PostgreSQL unless another worker
        did this period or the marker is not the known one (a Redis that lost
        its counts must not overwrite the copy); True when copied."""
        recorded = self.known.get(conn.id)
        if recorded is None:
            return False
        try:
            enforced = await self.store.enforced_windows(conn.id)
        except Exception:  # not configured in this process yet
            return False
        sizes = [w.window_ms for w in enforced if w.window_ms > SHORT_WINDOW_MS]
        if not sizes:
            return False
        lock = keys.connection(conn.id).checkpoint_lock
        period_ms = max(1, int(self.check_seconds * 1000) - 100)
        if not await self.redis.set(lock, "1", nx=True, px=period_ms):
            return False
        marker, at_ms, buckets = await self.store.snapshot(conn.id, sizes)
        if marker != recorded:
            return False
        docs = [{str(i): n for i, n in buckets[ms].items()} for ms in sizes]
        await self.pool.execute(db.q("heal_checkpoint_write"), conn.id, sizes, docs, at_ms)
        return True
