"""The lineage marker on a Redis Cluster is stamped with the node that holds it: a
connection whose slot failed over to a replica, which may lack the master's last
writes although it has the (old) marker, counts as lost and is healed."""

from __future__ import annotations

import asyncio

import pytest
from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot

from conftest import LocalCluster
from crmsync.queue import keys
from crmsync.queue.store import Band, QueueStore
from crmsync.ratelimit import RateWindow
from crmsync.redis_client import RedisClient, open_redis
from crmsync.settings import RedisMode

WINDOWS = [RateWindow(10, 1000)]


async def _store(redis: RedisClient, cid: str) -> QueueStore:
    store = QueueStore(redis)
    await store.configure(cid, WINDOWS, breaker_threshold=5, breaker_recovery_ms=1000, paused=None)
    await store.enqueue([(cid, "c1", Band.UPDATE)])
    return store


# (what the state's node field says, claim refused as) in each mode
CASES = [
    ("stamped", None),  # written by mark.lua on the node that holds it
    ("absent", None),  # a marker from before nodes were stamped: not checked
    ("other", "lost"),  # another node's id: the slot moved or failed over
]


@pytest.mark.parametrize(("node", "refused"), CASES)
async def test_a_marker_counts_on_the_node_that_wrote_it(
    any_redis: RedisClient, redis_mode: RedisMode, node: str, refused: str | None
) -> None:
    cid = f"lin-{node}"
    store = await _store(any_redis, cid)
    assert await store.mark(cid, "run-1") == "run-1"
    state = keys.connection(cid).state
    stamp = await any_redis.hget(state, "node")
    assert stamp is not None and (stamp == b"-") == (redis_mode == "standalone")
    if node == "absent":
        await any_redis.hdel(state, "node")
    elif node == "other":
        await any_redis.hset(state, "node", "0" * 40)
    claim = await store.claim(cid, max_requests=1, batch_size=1, lease_ms=5000, lineage="run-1")
    assert claim.refused == refused
    assert await store.lineage(cid) == (None if refused else "run-1")
    assert (await store.enqueue([(cid, "c2", Band.UPDATE)])) == ({cid} if refused else set())
    # mark.lua keeps a marker it finds (even a stale one: the heal rewrites it).
    assert await store.mark(cid, "run-2") == "run-1"


@pytest.mark.slow
async def test_a_replica_promoted_with_the_old_marker_is_a_loss(
    redis_cluster: LocalCluster, redis_cluster_url: str
) -> None:
    redis = await open_redis(redis_cluster_url, "cluster")
    assert isinstance(redis, RedisCluster)
    cid = "lin-failover"
    slot = key_slot(keys.connection(cid).ready.encode())
    try:
        store = await _store(redis, cid)
        await store.mark(cid, "run-1")
        master = redis.get_node_from_key(keys.connection(cid).state)
        assert master is not None
        # The marker is on the replica; what follows is not.
        assert int(await redis.execute_command("WAIT", 1, 5000, target_nodes=master)) == 1
        ok = await store.claim(cid, max_requests=1, batch_size=1, lease_ms=60_000, lineage="run-1")
        assert ok.refused is None and ok.ids == ["c1"]
        dead = await asyncio.to_thread(redis_cluster.kill_master_unreplicated, slot, 0.5)
        try:
            await asyncio.to_thread(redis_cluster.wait_promoted, slot, dead)
            assert await redis.hget(keys.connection(cid).state, "lineage") == b"run-1"
            again = await store.claim(
                cid, max_requests=1, batch_size=1, lease_ms=60_000, lineage="run-1"
            )
            assert again.refused == "lost"
        finally:
            await asyncio.to_thread(redis_cluster.restart, dead)
    finally:
        await redis.aclose()
