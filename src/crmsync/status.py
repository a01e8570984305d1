"""What crmsync is doing: per connection ledger, queues, limits, breakers, latency.

One report for `crmsync status`, `GET /v1/status` and the demo: PostgreSQL
gives the ledger and dead letters; Redis (when reachable) adds queue depth,
breaker state, rate-limit blocks and the workers' counters.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import asyncpg
from redis.asyncio import Redis
from redis.exceptions import RedisError

from crmsync import db, stats
from crmsync.queue.store import QueueStore


async def status_report(pool: asyncpg.Pool[Any]) -> dict[str, Any]:
    """Per-connection ledger counts by status and dead letters, plus totals."""
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


async def collect(pool: asyncpg.Pool[Any], redis: Redis | None) -> dict[str, Any]:
    report = await status_report(pool)
    if redis is None:
        return report
    store = QueueStore(redis)
    try:
        for c in report["connections"]:
            depth = await store.depth(c["id"])
            counters = depth.stats  # the workers' and the claim script's counters
            blocked = depth.blocked_until_ms or 0
            c["queue"] = {
                "ready": depth.ready,
                "leased": depth.leased,
                "delayed": depth.delayed,
                "requeue": depth.requeue,
            }
            c["breaker"] = depth.breaker
            c["blocked_for_s"] = round(max(0.0, (blocked - depth.now_ms) / 1000), 1)
            c["limits"] = [dataclasses.asdict(w) for w in depth.windows]
            c["counters"] = {
                k: v for k, v in counters.items() if not k.startswith(("lat_", "lag_"))
            }
            c["latency_ms"] = {
                "p50": stats.percentile(counters, 0.50),
                "p99": stats.percentile(counters, 0.99),
                "send_lag_p99": stats.percentile(counters, 0.99, "lag"),
            }
    except (RedisError, OSError) as exc:
        report["redis_error"] = str(exc)
    return report
