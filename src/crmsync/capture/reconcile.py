"""Rebuild the Redis queues from PostgreSQL, the source of truth.

Redis is a cache of work: if it lost its data (restart without persistence,
FLUSHDB, failover), every contact whose version differs from the version its
connection last synced is queued again. Running it twice adds nothing new
because the queue coalesces (an id already queued keeps its place), and work a
worker has leased is not duplicated either (the enqueue script parks it).

Also the backfill of a new connection: its ledger is empty, so every contact
of its tenant is queued (the relay runs this by itself when it sees a
connection appear).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import asyncpg

from crmsync import db
from crmsync.counters import ProcessCounts
from crmsync.errors import UserError
from crmsync.queue.store import Band, QueueStore

PAGE = 10_000


async def _pages(
    pool: asyncpg.Pool[Any], query: str, connection_id: str, tenant: str
) -> AsyncIterator[list[asyncpg.Record]]:
    """Keyset pages of (contact id, band): short queries, no long-held snapshot."""
    last = ""
    while True:
        rows = await pool.fetch(db.q(query), connection_id, tenant, last, PAGE)
        if not rows:
            return
        yield rows
        if len(rows) < PAGE:
            return
        last = rows[-1]["id"]


async def reconcile_connection(
    pool: asyncpg.Pool[Any], store: QueueStore, connection_id: str, tenant: str
) -> int:
    """Queue everything one connection still has to receive; returns how many ids."""
    total = 0
    async for rows in _pages(pool, "reconcile_contacts", connection_id, tenant):
        await store.enqueue([(connection_id, r["id"], r["band"]) for r in rows])
        total += len(rows)
    async for rows in _pages(pool, "reconcile_orphans", connection_id, tenant):
        await store.enqueue([(connection_id, r["id"], Band.DELETE) for r in rows])
        total += len(rows)
    # Exported by the API's /metrics whichever process reconciled (the relay, the CLI).
    counts = ProcessCounts("reconcile")
    counts.add(enqueued=total, connections=1)
    await counts.push(store.redis, force=True)
    return total


async def reconcile(
    pool: asyncpg.Pool[Any], store: QueueStore, *, connection_id: str | None = None
) -> dict[str, int]:
    """Per connection (all, or the one given, paused ones included): ids queued."""
    conns = await pool.fetch(db.q("reconcile_connections"), connection_id)
    if connection_id is not None and not conns:
        raise UserError(
            f"no connection {connection_id!r}; `crmsync connections list` shows the existing ones"
        )
    return {c["id"]: await reconcile_connection(pool, store, c["id"], c["tenant"]) for c in conns}
