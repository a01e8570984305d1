"""Dead letters: list, replay and purge what the worker gave up on.

A dead letter keeps the CRM's own error and the payload that was refused. It
resolves itself when a later version of its contact syncs to its connection (or
the contact's delete succeeds): the worker stamps ``resolved_at`` and the letter
stays as history, out of every count and listing of open letters.
Replaying takes the letters out, gives the ledger row a fresh attempt budget
and queues the contact again; the worker then syncs its *current* state (which
may have changed since it failed). Purging forgets the letters; the ledger
keeps saying ``dead`` until the contact changes again, so ``reconcile`` does
not bring purged work back.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Literal

import asyncpg
from prometheus_client import Counter

from crmsync import db
from crmsync.errors import UserError
from crmsync.queue.store import QueueStore

REPLAYED = Counter("crmsync_dlq_replayed_total", "Dead letters replayed (queued again).")
PURGED = Counter("crmsync_dlq_purged_total", "Dead letters purged.")


Which = Literal["open", "resolved", "all"]
WHICH: tuple[Which, ...] = ("open", "resolved", "all")


@dataclass(frozen=True, slots=True)
class DeadFilter:
    """Which dead letters: all given conditions must hold; none given means all
    (of ``which``: the open ones unless asked for the resolved history)."""

    connection: str | None = None
    error: str | None = None  # found in the error or error code, case-insensitive
    ids: tuple[int, ...] | None = None
    tenant: str | None = None  # the letters of this tenant's connections only (a scope)
    which: Which = "open"

    @property
    def empty(self) -> bool:
        return self.connection is None and not self.error and not self.ids

    def args(self) -> tuple[str | None, str | None, list[int] | None, str | None, str]:
        ids = list(self.ids) if self.ids else None
        return self.connection, self.error or None, ids, self.tenant, self.which


async def _check(pool: asyncpg.Pool[Any], f: DeadFilter) -> None:
    if f.connection is not None and not await pool.fetchval(
        db.q("dlq_connection_exists"), f.connection, f.tenant
    ):
        raise UserError(
            f"no connection {f.connection!r}; `crmsync connections list` shows the existing ones"
        )


def _require_filter(f: DeadFilter, all_: bool, verb: str) -> None:
    if f.empty and not all_:
        raise UserError(
            f"refusing to {verb} every dead letter: give --connection, --error or --id, "
            "or --all to mean all of them"
        )


async def list_dead(
    pool: asyncpg.Pool[Any], f: DeadFilter = DeadFilter(), *, limit: int = 100
) -> tuple[list[dict[str, Any]], int]:
    """The first ``limit`` matching dead letters (oldest first) and how many match in all."""
    if limit < 1:
        raise UserError(f"--limit must be at least 1, got {limit}")
    await _check(pool, f)
    rows = await pool.fetch(db.q("dlq_list"), *f.args(), limit)
    total: int = await pool.fetchval(db.q("dlq_count"), *f.args())
    return [dict(r) for r in rows], total


async def replay(
    pool: asyncpg.Pool[Any], store: QueueStore, f: DeadFilter, *, all_: bool = False
) -> int:
    """Queue the matching open letters' contacts again; returns how many
    (connection, contact) pairs. A resolved letter has nothing left to replay."""
    _require_filter(f, all_, "replay")
    await _check(pool, f)
    f = replace(f, which="open")
    async with pool.acquire() as conn, conn.transaction():
        rows = await conn.fetch(db.q("dlq_replay"), *f.args())
        items = [(r["connection_id"], r["contact_id"], int(r["band"])) for r in rows]
        # Inside the transaction: if Redis fails, the dead letters stay.
        await store.enqueue(items)
    REPLAYED.inc(len(items))
    return len(items)


async def purge(pool: asyncpg.Pool[Any], f: DeadFilter, *, all_: bool = False) -> int:
    """Delete the matching dead letters; returns how many."""
    _require_filter(f, all_, "purge")
    await _check(pool, f)
    n: int = await pool.fetchval(db.q("dlq_purge"), *f.args())
    PURGED.inc(n)
    return n
