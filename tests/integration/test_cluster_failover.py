"""A master of the real test cluster killed: its replica takes over, the same
clients go on with the queue, and wake-ups follow the channels to their new
master. (Writes the replica had not received are another matter: here the
replica is given everything first, with WAIT.)"""

from __future__ import annotations

import asyncio

import pytest
from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot
from test_wake import collect, ids_in_every_shard

from conftest import LocalCluster
from crmsync.queue import keys
from crmsync.queue.store import Band, QueueStore
from crmsync.ratelimit import RateWindow
from crmsync.redis_client import open_redis


@pytest.mark.slow
async def test_a_killed_master_is_replaced_and_the_queue_goes_on(
    redis_cluster: LocalCluster, redis_cluster_url: str
) -> None:
    redis = await open_redis(redis_cluster_url, "cluster")
    assert isinstance(redis, RedisCluster)
    store = QueueStore(redis)
    cid = "failover-1"
    ck = keys.connection(cid)
    slot = key_slot(ck.ready.encode())
    await store.configure(
        cid, [RateWindow(1000, 1000)], breaker_threshold=5, breaker_recovery_ms=1000, paused=None
    )
    await store.enqueue([(cid, f"c-{i}", Band.UPDATE) for i in range(30)])
    first = await store.claim(cid, max_requests=10, batch_size=1, lease_ms=60_000)
    await store.ack(first, first.ids)
    master = redis.get_node_from_key(ck.ready)
    assert master is not None
    # Every write on the replica before the crash: this test is about promotion.
    synced = await redis.execute_command("WAIT", 1, 5000, target_nodes=master)
    assert int(synced) == 1
    wakes = store.wakeups.listen()
    await asyncio.wait_for(wakes.subscribed(), timeout=10)
    dead = redis_cluster.kill_master(slot)
    try:
        async with wakes:
            new = await asyncio.to_thread(redis_cluster.wait_promoted, slot, dead)
            assert new.port != dead.port and dead.port == int(master.port)

            depth = await store.depth(cid)  # the same client finds the new master
            assert (depth.ready, depth.leased) == (20, 0)
            assert depth.stats["acked"] == 10
            again = await store.claim(cid, max_requests=10, batch_size=1, lease_ms=60_000)
            assert len(again.ids) == 10 and not set(again.ids) & set(first.ids)

            await asyncio.wait_for(wakes.subscribed(), timeout=30)
            everywhere = ids_in_every_shard(1)
            await store.wakeups.publish(everywhere)
            assert await collect(wakes, set(everywhere)) == set(everywhere)
    finally:
        await redis.aclose()
        await asyncio.to_thread(redis_cluster.restart, dead)
