"""The worker's PostgreSQL: what a claim reads and what it records.

Per claim, one statement reads the current row and the ledger row of every
claimed id (``worker_load``) and one writes every ledger row (``worker_record``),
with the dead letters in the same transaction when there are any: a claim's
outcomes are recorded together or not at all. The ledger is written before the
claim is acknowledged in Redis, so a crash in between only lets the lease
expire and the same idempotent upsert be sent again; ``worker_record`` never
rolls a row back to an older version (a late writer whose lease expired).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import asyncpg
import structlog

from crmsync import db
from crmsync.model import Claimed, Contact, DeadLetter, LedgerRow, LedgerWrite
from crmsync.worker.ports import LedgerUnavailable

log = structlog.get_logger(__name__)

# What a statement may raise when PostgreSQL is down, restarting or refusing.
DB_ERRORS = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError)


def claimed_from_row(row: asyncpg.Record, tenant: str) -> Claimed:
    """One row of ``worker_load``: a contact of another tenant counts as gone
    (a contact syncs only to its own tenant's connections)."""
    contact: Contact | None = None
    if row["version"] is not None and row["tenant"] == tenant:
        contact = Contact(
            id=row["id"],
            tenant=row["tenant"],
            email=row["email"],
            first_name=row["first_name"],
            last_name=row["last_name"],
            company=row["company"],
            status=row["status"],
            version=row["version"],
            deleted=row["deleted"],
            attributes=row["attributes"] or {},
        )
    ledger: LedgerRow | None = None
    if row["sync_status"] is not None:
        ledger = LedgerRow(
            external_id=row["external_id"],
            synced_version=row["synced_version"],
            status=row["sync_status"],
            attempts=row["attempts"] or 0,
        )
    committed = row["committed_ms"] if contact is not None else None
    return Claimed(row["id"], contact, ledger, committed)


class PgLedger:
    """``Ledger`` on an asyncpg pool."""

    def __init__(self, pool: asyncpg.Pool[Any]) -> None:
        self.pool = pool

    async def load(self, connection_id: str, tenant: str, ids: Sequence[str]) -> list[Claimed]:
        try:
            rows = await self.pool.fetch(db.q("worker_load"), connection_id, ids)
        except DB_ERRORS as exc:
            log.warning("worker.load_failed", connection=connection_id, error=str(exc))
            raise LedgerUnavailable(str(exc)) from exc
        return [claimed_from_row(r, tenant) for r in rows]

    async def record(
        self, connection_id: str, rows: Sequence[LedgerWrite], dead: Sequence[DeadLetter]
    ) -> None:
        if not rows and not dead:
            return
        try:
            if dead:  # ledger and dead letters together or not at all
                async with self.pool.acquire() as pg, pg.transaction():
                    await _write(pg, connection_id, rows, dead)
            else:  # the common case: one statement, atomic by itself
                await _write(self.pool, connection_id, rows, dead)
        except DB_ERRORS as exc:
            log.warning("worker.record_failed", connection=connection_id, error=str(exc))
            raise LedgerUnavailable(str(exc)) from exc

    async def pause(self, connection_id: str, reason: str, rev: str | None = None) -> bool:
        try:
            rows = await self.pool.fetch(
                db.q("worker_pause_connection"), connection_id, reason, rev
            )
        except DB_ERRORS as exc:
            raise LedgerUnavailable(str(exc)) from exc
        return bool(rows)


async def _write(
    pg: db.Executor,
    connection_id: str,
    rows: Sequence[LedgerWrite],
    dead: Sequence[DeadLetter],
) -> None:
    """One set-based statement each: columns of the rows as arrays."""
    if rows:
        await pg.execute(db.q("worker_record"), connection_id, *zip(*rows, strict=True))
    if dead:
        await pg.execute(db.q("worker_dead_letters"), connection_id, *zip(*dead, strict=True))
