"""``GET /v1/status``: what PostgreSQL knows about each connection's progress."""

from __future__ import annotations

from typing import Any

import asyncpg

from crmsync import db


async def status_report(pool: asyncpg.Pool[Any]) -> dict[str, Any]:
    """Per-connection ledger counts and dead letters, plus totals.

    Callers may extend the returned dict (e.g. with Redis queue depths).
    """
    async with pool.acquire() as conn:
        rows = await conn.fetch(db.q("api_status_connections"))
        totals = await conn.fetchrow(db.q("api_status_totals"))
    assert totals is not None
    return {
        "connections": [
            {
                "id": r["id"],
                "tenant": r["tenant"],
                "crm": r["crm"],
                "paused": r["paused_reason"] is not None,
                "paused_reason": r["paused_reason"],
                "sync": dict(r["sync"]),
                "dead_letters": r["dead_letters"],
            }
            for r in rows
        ],
        "totals": dict(totals),
    }
