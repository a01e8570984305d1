"""Every component that reads or writes Redis, on the real Redis Cluster: the HTTP
API (health, status, metrics, pause/resume, contact lookup, dead-letter replay),
the operator commands (`status`, `dlq`, `reconcile`, `connections resume`) as
processes, and the relay. Each reads connections spread over the cluster's
masters, so every multi-connection read crosses nodes."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import orjson
import pytest

from crmsync.api.app import create_app
from crmsync.capture import relay
from crmsync.connections import Connection
from crmsync.queue import keys
from crmsync.queue.store import Band, QueueStore
from crmsync.ratelimit import RateWindow
from crmsync.redis_client import RedisClient, open_redis
from crmsync.settings import Settings
from crmsync_lab.harness.processes import crmsync_argv
from support import UNREACHABLE, add_connections, asgi_client

AUTH = {"Authorization": "Bearer test-key"}
# Enough connections that the three masters each hold some.
IDS = [f"cl-{i}" for i in range(12)]


@pytest.fixture
def cluster_settings(settings: Settings, redis_cluster_url: str) -> Settings:
    return settings.model_copy(update={"redis_url": redis_cluster_url, "redis_mode": "cluster"})


@pytest.fixture
async def redis(redis_cluster_url: str) -> AsyncIterator[RedisClient]:
    client = await open_redis(redis_cluster_url, "cluster")
    yield client
    await client.aclose()


@pytest.fixture
async def conns(pool: asyncpg.Pool[Any], redis: RedisClient) -> list[str]:
    await add_connections(
        pool,
        [
            Connection(cid, "acme", "salesforce", cid, UNREACHABLE, "tok-123456789",
                       (RateWindow(100, 1000),))
            for cid in IDS
        ],
    )  # fmt: skip
    store = QueueStore(redis)
    for cid in IDS:
        await store.configure(
            cid, [RateWindow(100, 1000)], breaker_threshold=5, breaker_recovery_ms=1000,
            paused=None,
        )  # fmt: skip
    masters = {str(redis.get_node_from_key(keys.connection(c).ready)) for c in IDS}  # type: ignore[union-attr]
    assert len(masters) == 3, masters
    return IDS


@pytest.fixture
async def api(
    pool: asyncpg.Pool[Any], cluster_settings: Settings
) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(cluster_settings, pool=pool)
    async with app.router.lifespan_context(app), asgi_client(app) as c:
        yield c


async def cli(settings: Settings, *args: str) -> str:
    """``crmsync <args>`` as a process on the cluster; its output (exit code 0)."""
    env = {
        **os.environ,
        "CRMSYNC_DATABASE_URL": settings.database_url,
        "CRMSYNC_REDIS_URL": settings.redis_url,
        "CRMSYNC_REDIS_MODE": "cluster",
        "CRMSYNC_SECRET_KEY": settings.secret_key,
    }
    proc = await asyncio.create_subprocess_exec(
        *crmsync_argv(*args), env=env, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, out.decode()
    return out.decode()


async def test_the_api_reads_and_writes_every_master(
    api: httpx.AsyncClient, pool: asyncpg.Pool[Any], redis: RedisClient, conns: list[str]
) -> None:
    health = await api.get("/healthz")
    assert health.status_code == 200 and health.json()["redis"] == "ok"
    await pool.execute(
        "INSERT INTO contacts (id, tenant, email, last_name) VALUES ('c1', 'acme', 'a@x.io', 'A')"
    )
    store = QueueStore(redis)
    await store.enqueue([(cid, f"q-{i}", int(Band.UPDATE)) for i, cid in enumerate(conns)
                         for _ in range(1)] + [(conns[5], "c1", int(Band.UPDATE))])  # fmt: skip
    status = (await api.get("/v1/status", headers=AUTH)).json()
    depth = {c["id"]: c["queue"]["ready"] for c in status["connections"]}
    assert depth == {cid: (2 if cid == conns[5] else 1) for cid in conns}
    metrics = (await api.get("/metrics", headers=AUTH)).text
    assert f'connection="{conns[11]}"' in metrics
    found = (await api.get("/v1/contacts:lookup", params={"q": "c1"}, headers=AUTH)).json()
    where = {s["connection_id"]: s.get("queue") for s in found["contacts"][0]["sync"]}
    assert where[conns[5]] == "ready"
    # Resume ends a pause (and a CRM's block) in Redis, on the connection's master.
    for cid in (conns[0], conns[7]):
        await store.pause(cid, "held by a 401")
        assert (await api.post(f"/v1/connections/{cid}/resume", headers=AUTH)).status_code == 200
        assert not (await store.depth(cid)).paused


async def test_operator_commands_on_the_cluster(
    cluster_settings: Settings, pool: asyncpg.Pool[Any], redis: RedisClient, conns: list[str]
) -> None:
    await pool.execute(
        "INSERT INTO contacts (id, tenant, email, last_name)"
        " SELECT 'k' || g, 'acme', 'k' || g || '@x.io', 'K' FROM generate_series(1, 5) g"
    )
    await pool.execute("DELETE FROM outbox")
    queued = orjson.loads(await cli(cluster_settings, "status", "--json"))
    assert {c["id"] for c in queued["connections"]} == set(conns)
    # reconcile queues every contact of every connection, on whichever master it lives.
    out = await cli(cluster_settings, "reconcile")
    assert "reconcile: 60" in out, out
    store = QueueStore(redis)
    assert [(await store.depth(cid)).ready for cid in conns] == [5] * len(conns)
    # A dead letter replayed goes back to its connection's queue.
    await pool.execute(
        "INSERT INTO dead_letters (connection_id, contact_id, version, operation, error,"
        " payload, attempts) VALUES ($1, 'k9', 1, 'create', 'boom', '{}'::jsonb, 3)",
        conns[4],
    )
    assert "k9" in await cli(cluster_settings, "dlq", "list")
    assert "replayed 1" in await cli(cluster_settings, "dlq", "replay", "--connection", conns[4])
    assert (await store.depth(conns[4])).ready == 6
    await store.pause(conns[9], "held by a 401")
    await cli(cluster_settings, "connections", "resume", conns[9])
    assert not (await store.depth(conns[9])).paused


async def test_the_relay_fills_queues_on_every_master(
    cluster_settings: Settings, pool: asyncpg.Pool[Any], redis: RedisClient, conns: list[str]
) -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(relay.run_relay(cluster_settings, stop=stop, poll_seconds=0.1))
    try:
        await pool.execute(
            "INSERT INTO contacts (id, tenant, email, last_name)"
            " SELECT 'r' || g, 'acme', 'r' || g || '@x.io', 'R' FROM generate_series(1, 30) g"
        )
        store = QueueStore(redis)
        for _ in range(100):
            if [(await store.depth(c)).ready for c in conns] == [30] * len(conns):
                break
            await asyncio.sleep(0.1)
        assert [(await store.depth(c)).ready for c in conns] == [30] * len(conns)
        assert await pool.fetchval("SELECT count(*) FROM outbox") == 0
    finally:
        stop.set()
        await task
