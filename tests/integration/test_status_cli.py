"""`crmsync status` against real PostgreSQL and Redis, in an 80-column terminal."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import redis.asyncio as aioredis
from typer.testing import CliRunner

from crmsync import connections
from crmsync.cli import app
from crmsync.queue.store import QueueStore
from crmsync.settings import Settings
from support import add_connections, connection

REASON = "CRM rejected the token (401): INVALID_SESSION_ID: Session expired or invalid"


async def test_status_at_80_columns_json_and_watch_argument(
    pg: Any, settings: Settings, redis_client: aioredis.Redis
) -> None:
    await add_connections(
        pg,
        [
            connection("acme-salesforce-prod", "salesforce", tenant="acme",
                       token="secret-token-123456"),
            connection("acme-hubspot-prod", "hubspot", tenant="acme"),
        ],
    )  # fmt: skip
    await connections.pause(pg, "acme-salesforce-prod", REASON)
    store = QueueStore(redis_client)
    for cid in ("acme-salesforce-prod", "acme-hubspot-prod"):
        await store.configure(cid, [], breaker_threshold=5, breaker_recovery_ms=30_000, paused=None)
    await store.enqueue([("acme-salesforce-prod", "c1", 0)])
    await redis_client.hset("crmsync:{c:acme-hubspot-prod}:state", "br_state", "open")
    env = {
        "CRMSYNC_DATABASE_URL": settings.database_url,
        "CRMSYNC_REDIS_URL": settings.redis_url,
        "COLUMNS": "80",
    }

    async def cli(*args: str) -> Any:
        # The CLI runs its own event loop: give it a thread.
        return await asyncio.to_thread(CliRunner().invoke, app, ["status", *args], env=env)

    res = await cli()
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert all(len(line) <= 80 for line in lines), res.output
    rows = {line.split()[0]: line for line in reversed(lines) if line.startswith("acme-")}
    assert "breaker open" in rows["acme-hubspot-prod"]
    assert "paused" in rows["acme-salesforce-prod"]
    assert REASON in " ".join(line.strip() for line in lines)
    assert "secret-token" not in res.output

    res = await cli("--json")
    assert res.exit_code == 0, res.output
    report = orjson.loads(res.output)
    sf = next(c for c in report["connections"] if c["id"] == "acme-salesforce-prod")
    assert (sf["paused_reason"], sf["queue"]["ready"]) == (REASON, 1)

    res = await cli("5")  # SECONDS without --watch
    assert res.exit_code != 0 and "--watch" in str(res.exception)
