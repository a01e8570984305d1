"""Relay: outbox -> the right connections' Redis queues with the right bands."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Sequence
from typing import Any, cast

import asyncpg
import pytest
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError

from crmsync.capture.relay import LossWatch, relay_once, run_relay
from crmsync.queue import keys
from crmsync.queue.store import BAND_SCALE, Band, QueueStore
from crmsync.settings import Settings
from support import OpenApi, add_connections, connection

CONNECTIONS = [
    connection("acme-sf", "salesforce", tenant="acme"),
    connection("acme-hs", "hubspot", tenant="acme"),
    connection("dflt-sf", "salesforce"),
]


@pytest.fixture
async def pool(pool: asyncpg.Pool[Any]) -> asyncpg.Pool[Any]:
    """The test's pool: the connections of ``CONNECTIONS``."""
    await add_connections(pool, CONNECTIONS)
    return pool


async def queued(r: aioredis.Redis, cid: str) -> dict[str, int]:
    """contact id -> band of the connection's ready queue."""
    entries = cast(
        "list[tuple[bytes, float]]",
        await r.zrange(keys.connection(cid).ready, 0, -1, withscores=True),
    )
    return {k.decode(): int(score) // BAND_SCALE for k, score in entries}


async def outbox_count(pool: asyncpg.Pool[Any]) -> int:
    n: int = await pool.fetchval("SELECT count(*) FROM outbox")
    return n


async def insert(pool: asyncpg.Pool[Any], *rows: tuple[str, str]) -> None:
    await pool.executemany(
        "INSERT INTO contacts (id, tenant, email, company) VALUES ($1, $2, $1 || '@x.io', 'X')",
        rows,
    )


async def test_sql_writes_reach_the_tenants_connections_with_bands(
    pool: asyncpg.Pool[Any], redis_client: aioredis.Redis
) -> None:
    store = QueueStore(redis_client)
    await insert(pool, ("a1", "acme"), ("a2", "acme"), ("a3", "acme"), ("d1", "default"))
    await insert(pool, ("n1", "nobody"))  # a tenant without connections
    assert await outbox_count(pool) == 5

    assert await relay_once(pool, store, 1000) == 5
    assert await outbox_count(pool) == 0
    creates = {"a1": Band.CREATE, "a2": Band.CREATE, "a3": Band.CREATE}
    assert await queued(redis_client, "acme-sf") == creates
    assert await queued(redis_client, "acme-hs") == creates
    assert await queued(redis_client, "dflt-sf") == {"d1": Band.CREATE}

    # The workers took everything; then updates, a soft and a hard delete.
    await redis_client.flushdb()
    await pool.execute("UPDATE contacts SET first_name = 'Ada' WHERE id = 'a1'")
    await pool.execute("UPDATE contacts SET deleted_at = now() WHERE id = 'a2'")
    await pool.execute("DELETE FROM contacts WHERE id = 'd1'")
    await pool.execute("UPDATE contacts SET first_name = first_name WHERE id = 'a3'")  # no change
    assert await relay_once(pool, store, 1000) == 3
    expected = {"a1": Band.UPDATE, "a2": Band.DELETE}
    assert await queued(redis_client, "acme-sf") == expected
    assert await queued(redis_client, "acme-hs") == expected
    assert await queued(redis_client, "dflt-sf") == {"d1": Band.DELETE}


async def test_one_id_in_two_tenants_goes_to_each_tenants_connections_only(
    pool: asyncpg.Pool[Any], redis_client: aioredis.Redis
) -> None:
    store = QueueStore(redis_client)
    await insert(pool, ("m1", "acme"), ("m1", "default"))
    await relay_once(pool, store, 100)
    await redis_client.flushdb()
    # A change of default's m1 reaches default's connection, never acme's.
    await pool.execute("UPDATE contacts SET deleted_at = now() WHERE tenant = 'default'")
    await relay_once(pool, store, 100)
    assert await queued(redis_client, "dflt-sf") == {"m1": Band.DELETE}
    assert await queued(redis_client, "acme-sf") == {}
    assert await queued(redis_client, "acme-hs") == {}


async def test_api_writes_are_relayed(
    pool: asyncpg.Pool[Any], api_client: OpenApi, redis_client: aioredis.Redis
) -> None:
    client = await api_client()
    auth = {"Authorization": "Bearer test-key"}
    body = {
        "contacts": [{"id": f"b{i}", "tenant": "acme", "email": f"b{i}@x.io"} for i in range(3)]
    }
    assert (await client.post("/v1/contacts:batch", json=body, headers=auth)).status_code < 300
    put = {"tenant": "default", "email": "p@x.io", "company": "P"}
    assert (await client.put("/v1/contacts/p1", json=put, headers=auth)).status_code < 300
    store = QueueStore(redis_client)
    # The same contact several times in one batch keeps its most urgent band.
    await pool.execute("UPDATE contacts SET last_name = 'L' WHERE id = 'b0'")
    assert await relay_once(pool, store, 1000) == 5
    bs = {f"b{i}": Band.CREATE for i in range(3)}
    assert await queued(redis_client, "acme-sf") == bs
    assert await queued(redis_client, "acme-hs") == bs
    assert await queued(redis_client, "dflt-sf") == {"p1": Band.CREATE}
    # A contact still queued keeps its place and best band when deleted...
    assert (await client.delete("/v1/contacts/p1", headers=auth)).status_code < 300
    await relay_once(pool, store, 1000)
    assert await queued(redis_client, "dflt-sf") == {"p1": Band.CREATE}
    # ...and once a worker took it, a revive then a delete queue it as an UPDATE.
    await redis_client.delete(keys.connection("dflt-sf").ready)
    await pool.execute("UPDATE contacts SET deleted_at = NULL, company = 'Q' WHERE id = 'p1'")
    await pool.execute("UPDATE contacts SET deleted_at = now() WHERE id = 'p1'")
    await relay_once(pool, store, 1000)
    assert await queued(redis_client, "dflt-sf") == {"p1": Band.UPDATE}
    assert (await client.put("/v1/contacts/p1", json=put, headers=auth)).status_code < 300
    await relay_once(pool, store, 1000)
    await redis_client.delete(keys.connection("dflt-sf").ready)  # a worker took it
    assert (await client.delete("/v1/contacts/p1", headers=auth)).status_code < 300
    await relay_once(pool, store, 1000)
    assert await queued(redis_client, "dflt-sf") == {"p1": Band.DELETE}


async def test_outbox_rows_stay_when_redis_fails(pool: asyncpg.Pool[Any]) -> None:
    await insert(pool, ("a1", "acme"), ("d1", "default"))
    dead = aioredis.from_url("redis://127.0.0.1:1/0")  # nothing listens on port 1
    try:
        with pytest.raises((RedisConnectionError, OSError)):
            await relay_once(pool, QueueStore(dead), 100)
    finally:
        await dead.aclose()
    assert await outbox_count(pool) == 2


async def test_outbox_rows_are_deleted_only_after_enqueue(
    pool: asyncpg.Pool[Any], redis_client: aioredis.Redis
) -> None:
    """While Redis is being written, the rows are still in the outbox (and locked)."""
    await insert(pool, ("a1", "acme"), ("a2", "acme"))
    seen: list[int] = []

    class Watching(QueueStore):
        async def enqueue(self, items: Sequence[tuple[str, str, int]]) -> set[str]:
            # Another session sees the rows still there while we enqueue.
            seen.append(await pool.fetchval("SELECT count(*) FROM outbox"))
            return await super().enqueue(items)

    assert await relay_once(pool, Watching(redis_client), 100) == 2
    assert seen == [2]
    assert await outbox_count(pool) == 0
    assert set(await queued(redis_client, "acme-sf")) == {"a1", "a2"}


async def test_two_relays_take_each_row_once(
    pool: asyncpg.Pool[Any], redis_client: aioredis.Redis
) -> None:
    n = 3000
    await insert(pool, *((f"c{i:05d}", "acme") for i in range(n)))
    taken: dict[str, Counter[str]] = {"r1": Counter(), "r2": Counter()}

    class Recording(QueueStore):
        def __init__(self, name: str) -> None:
            super().__init__(redis_client)
            self.name = name

        async def enqueue(self, items: Sequence[tuple[str, str, int]]) -> set[str]:
            taken[self.name].update(c for cid, c, _ in items if cid == "acme-sf")
            await asyncio.sleep(0.005)  # hold the rows' locks so the other relay must skip them
            return await super().enqueue(items)

    async def drain(store: QueueStore) -> int:
        moved = 0
        while (k := await relay_once(pool, store, 100)) > 0:
            moved += k
        return moved

    moved = await asyncio.gather(drain(Recording("r1")), drain(Recording("r2")))
    assert sum(moved) == n
    assert all(m > 0 for m in moved), moved
    both = taken["r1"] + taken["r2"]
    assert len(both) == n and max(both.values()) == 1  # every row enqueued exactly once
    assert not set(taken["r1"]) & set(taken["r2"])
    assert await outbox_count(pool) == 0
    assert len(await queued(redis_client, "acme-hs")) == n


async def test_run_relay_wakes_on_notify_and_backfills_new_connections(
    pool: asyncpg.Pool[Any], settings: Settings, redis_client: aioredis.Redis
) -> None:
    await insert(pool, ("old", "acme"))  # written before the relay started
    stop = asyncio.Event()
    # A long poll: only NOTIFY can make the relay react within the test's time.
    task = asyncio.create_task(run_relay(settings, stop=stop, poll_seconds=30))
    try:
        await _until(lambda: queued(redis_client, "acme-sf"), {"old": Band.CREATE})
        await insert(pool, ("new", "acme"))
        await _until(lambda: queued(redis_client, "acme-sf"), {"old": 0, "new": 0})
        # Queued first, deleted from the outbox at commit, a moment later.
        await _until(lambda: outbox_count(pool), 0)
        # A connection added later gets the tenant's existing contacts.
        await pool.execute(
            "WITH i AS (INSERT INTO connections (id, tenant, crm, account, base_url)"
            " VALUES ('acme-2', 'acme', 'hubspot', 'a2', 'http://127.0.0.1:1') RETURNING id)"
            " SELECT pg_notify('crmsync_connections', id) FROM i"
        )
        await _until(lambda: queued(redis_client, "acme-2"), {"old": 0, "new": 0})
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


async def _until(probe: Any, expected: object, seconds: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + seconds
    while True:
        got = await probe()
        if got == expected:
            return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"waited {seconds}s for {expected!r}, have {got!r}")
        await asyncio.sleep(0.02)


async def test_run_relay_vacuums_the_outbox_after_a_bulk_move(
    pool: asyncpg.Pool[Any], settings: Settings, redis_client: aioredis.Redis
) -> None:
    """Dead outbox rows slow every later take until a vacuum: the relay runs one
    itself after moving ``vacuum_after`` rows."""

    async def vacuums() -> int:
        await pool.execute("SELECT pg_stat_clear_snapshot()")
        n = await pool.fetchval(
            "SELECT vacuum_count FROM pg_stat_user_tables WHERE relname = 'outbox'"
        )
        return int(n or 0)

    before = await vacuums()
    await insert(pool, *((f"bulk-{i}", "acme") for i in range(30)))
    stop = asyncio.Event()
    task = asyncio.create_task(run_relay(settings, stop=stop, poll_seconds=30, vacuum_after=25))
    try:
        await _until(lambda: outbox_count(pool), 0)
        await _until(vacuums, before + 1)
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


async def test_the_relay_notices_a_connection_whose_marker_is_gone(
    pool: asyncpg.Pool[Any], redis_client: aioredis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    """Its own enqueue answers whether the connection's Redis state carries a lineage
    marker: one it saw marked and no longer is, Redis lost; the rows it moved are
    in the queue all the same."""
    store = QueueStore(redis_client)
    losses = LossWatch()
    await redis_client.hset(keys.connection("acme-sf").state, "lineage", "run-1")
    await insert(pool, ("a1", "acme"))
    assert await relay_once(pool, store, 100, losses=losses) == 1
    assert losses.marked == {"acme-sf"}  # acme-hs was never marked: nothing to say
    await redis_client.delete(keys.connection("acme-sf").state, keys.connection("acme-sf").ready)
    await insert(pool, ("a2", "acme"))
    assert await relay_once(pool, store, 100, losses=losses) == 1
    assert losses.marked == set()
    assert "redis.lost" in capsys.readouterr().out
    assert set(await queued(redis_client, "acme-sf")) == {"a2"}
    assert await outbox_count(pool) == 0
