"""open_redis in each mode, against a real server and a real cluster: the right
client, or one sentence naming what to set (never a password)."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster

from crmsync.errors import UserError
from crmsync.redis_client import lazy_redis, open_redis
from crmsync.settings import RedisMode


async def test_each_mode_gets_its_client(redis_url: str, redis_cluster_url: str) -> None:
    single = await open_redis(redis_url)
    cluster = await open_redis(redis_cluster_url, "cluster")
    try:
        assert type(single) is aioredis.Redis and await single.ping()
        assert isinstance(cluster, RedisCluster)
        # The seed named one node; the client found the rest of the cluster.
        assert len(cluster.get_primaries()) == 3 and len(cluster.get_nodes()) == 6
        await cluster.set("crmsync:{a}:x", 1)
        await cluster.set("crmsync:{b}:x", 2)  # another slot, maybe another node
        assert await cluster.mget_nonatomic(["crmsync:{a}:x", "crmsync:{b}:x"]) == [b"1", b"2"]
    finally:
        await single.aclose()
        await cluster.aclose()


@pytest.mark.parametrize(
    ("which", "mode", "expected"),
    [
        ("cluster", "standalone", "is a Redis Cluster node; set CRMSYNC_REDIS_MODE=cluster"),
        ("standalone", "cluster", "is not a cluster node (cluster mode is off)"),
        ("nothing", "cluster", "cannot reach the Redis Cluster seed node at"),
        ("nothing", "standalone", "cannot reach Redis at"),
        ("cluster-db3", "cluster", "names database 3, but a Redis Cluster has only database 0"),
        ("nothing-twice", "cluster", "cannot reach any Redis Cluster seed node of"),
        ("seeds", "standalone", "names several nodes; a list of seed nodes is for"),
    ],
)
async def test_a_wrong_redis_is_one_clear_sentence(
    redis_url: str,
    redis_cluster_url: str,
    which: str,
    mode: RedisMode,
    expected: str,
) -> None:
    url = {
        "cluster": redis_cluster_url,
        "cluster-db3": f"{redis_cluster_url}/3",
        "standalone": redis_url.rsplit("/", 1)[0],
        "nothing": "redis://127.0.0.1:1/0",  # nothing listens on port 1
        "nothing-twice": "redis://127.0.0.1:1,127.0.0.1:2",
        "seeds": f"{redis_cluster_url},127.0.0.1:1",
    }[which]
    with pytest.raises(UserError) as caught:
        await open_redis(url, mode)
    assert expected in str(caught.value) and "\n" not in str(caught.value)


@pytest.mark.parametrize("mode", ["standalone", "cluster"])
async def test_a_password_never_shows(
    redis_url: str, redis_cluster_url: str, mode: RedisMode
) -> None:
    url = redis_url if mode == "standalone" else redis_cluster_url
    with pytest.raises(UserError) as caught:  # these servers want no password
        await open_redis(url.replace("redis://", "redis://crm:hunter2-secret@"), mode)
    message = str(caught.value)
    assert "hunter2-secret" not in message and "crm:***@" in message


async def test_a_seed_list_starts_while_its_first_node_is_down(redis_cluster_url: str) -> None:
    """A process (re)started while the node its URL names first is down (a failover
    under way) starts from the next seed; the API's lazy client too."""
    seeds = f"redis://127.0.0.1:1,{redis_cluster_url.removeprefix('redis://')}"
    client = await open_redis(seeds, "cluster")
    lazy = lazy_redis(seeds, "cluster", socket_connect_timeout=2)
    try:
        assert isinstance(client, RedisCluster) and len(client.get_primaries()) == 3
        await client.set("crmsync:{seeds}:x", 1)
        assert await lazy.get("crmsync:{seeds}:x") == b"1"
    finally:
        await client.aclose()
        await lazy.aclose()
