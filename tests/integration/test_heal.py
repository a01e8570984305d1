"""The lineage marker and the heal, on one Redis server and on a Redis Cluster.

A connection's loss is seen by its own claim (its keys share one slot: a
failover that loses some slots is seen for exactly those connections), healed
once under a lock, adopted by the other workers; long windows are copied to
PostgreSQL and restored from there.
"""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg

from crmsync.connections import Connection
from crmsync.queue import keys
from crmsync.queue.store import QueueStore
from crmsync.ratelimit import RateWindow, with_pacing
from crmsync.redis_client import RedisClient
from crmsync.worker.heal import ANY, Healer
from support import add_connections, connection

SHORT = RateWindow(100, 1000)  # paced at 20 per 200 ms
DAY = RateWindow(1000, 86_400_000)


def conn(cid: str) -> Connection:
    c = connection(cid, "hubspot")
    return Connection(c.id, c.tenant, c.crm, c.account, c.base_url, c.token, (SHORT, DAY), {})


async def configured(redis: RedisClient, *cids: str) -> QueueStore:
    store = QueueStore(redis)
    for cid in cids:
        await store.configure(
            cid, [SHORT, DAY], breaker_threshold=5, breaker_recovery_ms=30_000, paused=None
        )
    return store


async def claim(store: QueueStore, healer: Healer, cid: str, n: int = 1) -> Any:
    return await store.claim(
        cid, max_requests=n, batch_size=1, lease_ms=30_000, lineage=healer.lineage(cid)
    )


async def lose(redis: RedisClient, cid: str) -> None:
    """Every key of the connection gone, as a failover that lost its slot leaves it."""
    for k in keys.connection(cid).all_keys(w.window_ms for w in with_pacing([SHORT, DAY])):
        await redis.delete(k)


async def heals(pool: asyncpg.Pool[Any]) -> dict[str, int]:
    rows = await pool.fetch("SELECT connection_id, heals FROM redis_state")
    return {r["connection_id"]: r["heals"] for r in rows}


async def test_a_new_connection_is_marked_without_a_rebuild(
    pool: asyncpg.Pool[Any], any_redis: RedisClient
) -> None:
    cid = f"h-{uuid.uuid4().hex[:6]}"
    await add_connections(pool, [conn(cid)])
    store = await configured(any_redis, cid)
    healer = Healer(pool, store, margin=store.margin)
    assert healer.lineage(cid) == ANY
    assert (await claim(store, healer, cid)).refused == "lost"
    assert await healer.heal(conn(cid))
    assert (await claim(store, healer, cid)).refused == "empty"
    assert await heals(pool) == {cid: 0}
    assert healer.lineage(cid) == await store.lineage(cid)


async def test_a_lost_connection_alone_is_rebuilt_once_within_its_limits(
    pool: asyncpg.Pool[Any], any_redis: RedisClient, connect_redis: Any
) -> None:
    a, b = f"h-{uuid.uuid4().hex[:6]}", f"h-{uuid.uuid4().hex[:6]}"
    await add_connections(pool, [conn(a), conn(b)])
    await pool.executemany(
        "INSERT INTO contacts (id, email, company) VALUES ($1, $1 || '@x.io', 'Co')",
        [(f"c{i}",) for i in range(5)],
    )
    store = await configured(any_redis, a, b)
    healer = Healer(pool, store, margin=store.margin)
    for cid in (a, b):
        await claim(store, healer, cid)
        await healer.heal(conn(cid))
    marks = {cid: healer.lineage(cid) for cid in (a, b)}

    await lose(any_redis, a)
    assert (await claim(store, healer, a)).refused == "lost"
    assert (await claim(store, healer, b)).refused == "empty"  # its slot kept its state
    assert await healer.unmarked([conn(a), conn(b)]) == [a]

    # A second worker waits while the first heals, then adopts the new marker.
    other = Healer(pool, await configured(await connect_redis(), a, b), margin=store.margin)
    await other.load()
    lock = keys.connection(a).heal_lock
    await any_redis.set(lock, "someone", px=60_000)
    assert not await healer.heal(conn(a))
    await any_redis.delete(lock)

    assert await healer.heal(conn(a))
    assert healer.lineage(a) != marks[a] and healer.lineage(b) == marks[b]
    assert await heals(pool) == {a: 1, b: 0}
    depth = await store.depth(a)
    assert depth.ready == 5  # the queue rebuilt from PostgreSQL
    assert depth.in_window[SHORT.window_ms] == SHORT.limit  # short window: full for a span
    assert depth.in_window[DAY.window_ms] == DAY.limit  # no checkpoint: assume the worst
    assert (await claim(store, healer, a)).refused == "rate_limited"

    assert (await claim(other.store, other, a)).refused == "lineage"  # healed by another
    assert await other.heal(conn(a))
    assert other.lineage(a) == healer.lineage(a)
    assert await heals(pool) == {a: 1, b: 0}  # adopted, not healed again


async def test_long_windows_come_back_from_their_checkpoint(
    pool: asyncpg.Pool[Any], any_redis: RedisClient
) -> None:
    cid = f"h-{uuid.uuid4().hex[:6]}"
    await add_connections(pool, [conn(cid)])
    store = await configured(any_redis, cid)
    healer = Healer(pool, store, margin=store.margin)
    await claim(store, healer, cid)
    await healer.heal(conn(cid))
    granted, _ = await store.take(cid, 7)
    assert granted == 7

    assert await healer.checkpoint(conn(cid))
    assert not await healer.checkpoint(conn(cid))  # one copy per period, whoever makes it
    copied = await pool.fetchrow("SELECT * FROM rate_checkpoints WHERE connection_id = $1", cid)
    assert copied is not None and sum(copied["buckets"].values()) == 7

    await lose(any_redis, cid)
    await any_redis.delete(keys.connection(cid).checkpoint_lock)
    assert not await healer.checkpoint(conn(cid))  # a Redis that lost its counts is not copied
    assert (await claim(store, healer, cid)).refused == "lost"
    assert await healer.heal(conn(cid))
    depth = await store.depth(cid)
    # 7 as copied, plus what the day may have admitted since the copy (well under
    # a second ago): at most 20 per started 200 ms of pacing, and 20 more.
    assert 7 < depth.in_window[DAY.window_ms] <= 7 + 20 * 7
