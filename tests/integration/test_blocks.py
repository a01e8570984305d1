"""A wait a CRM asked for, as operators see and end it: status shows until when
and why (the CRM's words); `connections resume` (CLI or API) ends the block and
the slow-down for every worker. Real PostgreSQL and Redis."""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any

import orjson
import redis.asyncio as aioredis
from typer.testing import CliRunner

from crmsync.cli import app
from crmsync.queue import keys
from crmsync.queue.store import QueueStore
from crmsync.settings import Settings
from support import OpenApi, add_connections, connection

WHY = "TEN_SECONDLY_ROLLING: You have reached your ten_secondly_rolling limit."


async def _blocked(store: QueueStore, cid: str) -> None:
    await store.configure(cid, [], breaker_threshold=5, breaker_recovery_ms=30_000, paused=None)
    await store.block(cid, 1800.0, slow=True, reason=WHY)


async def test_status_shows_until_when_and_why_and_resume_ends_it(
    pg: Any, settings: Settings, redis_client: aioredis.Redis
) -> None:
    await add_connections(pg, [connection("acme-hs", "hubspot")])
    store = QueueStore(redis_client)
    await _blocked(store, "acme-hs")
    env = {
        "CRMSYNC_DATABASE_URL": settings.database_url,
        "CRMSYNC_REDIS_URL": settings.redis_url,
        "COLUMNS": "80",
    }

    async def cli(*args: str) -> Any:
        res = await asyncio.to_thread(CliRunner().invoke, app, list(args), env=env)
        assert res.exit_code == 0, res.output
        return res

    report = orjson.loads((await cli("status", "--json")).output)
    (c,) = report["connections"]
    assert 1790 <= c["blocked_for_s"] <= 1800 and c["blocked_reason"] == WHY
    until = datetime.fromisoformat(c["blocked_until"])
    assert abs((until - datetime.now(until.tzinfo)).total_seconds() - 1800) < 15
    text = " ".join((await cli("status")).output.split())
    assert "blocked" in text and f"until {c['blocked_until']}" in text and "ten_secondly" in text

    out = (await cli("connections", "resume", "acme-hs")).output
    assert "resumed" in out
    depth = await store.depth("acme-hs")
    assert depth.blocked_until_ms is None and depth.blocked_reason is None
    state = await redis_client.hgetall(keys.connection("acme-hs").state)
    assert not {b"slow_until_ms", b"blocked_until_ms"} & set(state), state


async def test_the_api_resume_ends_a_block_too(
    pg: Any, api_client: OpenApi, redis_client: aioredis.Redis
) -> None:
    await add_connections(pg, [connection("acme-sf", "salesforce")])
    store = QueueStore(redis_client)
    await _blocked(store, "acme-sf")
    client = await api_client()
    auth = {"Authorization": "Bearer test-key"}
    status = (await client.get("/v1/status", headers=auth)).json()
    assert status["connections"][0]["blocked_reason"] == WHY
    resp = await client.post("/v1/connections/acme-sf/resume", headers=auth)
    assert resp.status_code == 200, resp.text
    status = (await client.get("/v1/status", headers=auth)).json()
    c = status["connections"][0]
    assert (c["blocked_for_s"], c["blocked_until"], c["blocked_reason"]) == (0, None, None)
