"""What crmsync is doing: per connection queues, limits, breakers, ledger, dead letters."""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import asyncpg
from redis.asyncio import Redis

from crmsync import db, stats
from crmsync.queue.store import QueueStore


async def collect(pool: asyncpg.Pool[Any], redis: Redis) -> dict[str, Any]:
    store = QueueStore(redis)
    rows = await pool.fetch(db.q("status_ledger"))
    outbox = await pool.fetchrow(db.q("status_outbox"))
    now_ms = time.time() * 1000
    conns = []
    for r in rows:
        depth = dataclasses.asdict(await store.depth(r["id"]))
        counters = await stats.read(redis, r["id"])
        blocked = depth.get("blocked_until_ms") or 0
        conns.append(
            {
                "id": r["id"],
                "tenant": r["tenant"],
                "crm": r["crm"],
                "account": r["account"],
                "paused": r["paused_reason"],
                "queue": {k: depth.get(k) for k in ("ready", "leased", "delayed", "requeue")},
                "breaker": depth.get("breaker"),
                "blocked_for_s": round(max(0.0, (blocked - now_ms) / 1000), 1),
                "ledger": {
                    k: r[k] for k in ("synced", "skipped", "deleted", "retrying", "dead_letters")
                },
                "counters": {k: v for k, v in counters.items() if not k.startswith("lat_")},
                "latency_ms": {
                    "p50": stats.percentile(counters, 0.50),
                    "p99": stats.percentile(counters, 0.99),
                },
            }
        )
    return {
        "outbox": {
            "pending": outbox["pending"] if outbox else 0,
            "oldest": outbox["oldest"].isoformat() if outbox and outbox["oldest"] else None,
        },
        "connections": conns,
    }
