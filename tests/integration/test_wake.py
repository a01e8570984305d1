"""Wake-ups on a real Redis, one server and a cluster: every listener hears the
connections of every wake channel, and a lost link ends in a new subscription
and a wake for everything (messages sent meanwhile are gone)."""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import uuid
from collections.abc import Awaitable, Callable

import pytest
from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot

from conftest import LocalCluster, redis_cluster_script
from crmsync.queue import keys
from crmsync.queue import wake as wake_module
from crmsync.queue.wake import Wake, WakeListener, Wakeups
from crmsync.redis_client import RedisClient, open_redis

# A channel is shared by every database of a server: other test runs on this
# machine publish on it too, so this run's ids carry a prefix of their own.
MINE = f"w{uuid.uuid4().hex[:6]}-"


def ids_in_every_shard(per_shard: int = 2) -> list[str]:
    """Connection ids that cover every wake channel ``per_shard`` times."""
    out: dict[int, list[str]] = {s: [] for s in range(keys.WAKE_SHARDS)}
    for n in itertools.count():
        cid = f"{MINE}{n}"
        shard = out[keys.wake_shard(cid)]
        if len(shard) < per_shard:
            shard.append(cid)
        if all(len(v) == per_shard for v in out.values()):
            return [c for v in out.values() for c in v]
    raise AssertionError("unreachable")


async def next_wake(wakes: WakeListener, seconds: float = 10.0) -> Wake:
    """The next wake that concerns this run, with this run's ids only."""
    while True:
        wake = await asyncio.wait_for(wakes.__anext__(), timeout=seconds)
        ids = tuple(i for i in wake.ids if i.startswith(MINE))
        if ids or wake.everything:
            return Wake(ids, wake.everything)


async def collect(wakes: WakeListener, want: set[str]) -> set[str]:
    """The ids of wakes until ``want`` is in them (a cluster's may come in several)."""
    got: set[str] = set()
    while not want <= got:
        got |= set((await next_wake(wakes)).ids)
    return got


async def test_every_listener_hears_every_shard(
    connect_redis: Callable[[], Awaitable[RedisClient]],
) -> None:
    publisher = Wakeups(await connect_redis())
    ids = ids_in_every_shard()
    listeners = [Wakeups(await connect_redis()).listen() for _ in range(3)]
    for wakes in listeners:
        await asyncio.wait_for(wakes.subscribed(), timeout=10)
        assert await next_wake(wakes) == Wake(everything=True)
    await publisher.publish(ids)
    for wakes in listeners:
        assert await collect(wakes, set(ids)) == set(ids)
    await publisher.publish(ids[:1])
    for wakes in listeners:
        assert await next_wake(wakes) == Wake((ids[0],))
    for wakes in listeners:
        await wakes.aclose()
        # Closed: iteration ends instead of waiting for ever.
        assert [w async for w in wakes] == []


async def test_nothing_to_announce_sends_nothing(any_redis: RedisClient) -> None:
    async with Wakeups(any_redis).listen() as wakes:
        await asyncio.wait_for(wakes.subscribed(), timeout=10)
        assert (await next_wake(wakes)).everything
        await Wakeups(any_redis).publish([])
        await Wakeups(any_redis).publish([f"{MINE}only"])
        assert await next_wake(wakes) == Wake((f"{MINE}only",))


async def _kill_pubsub_clients(redis: RedisClient) -> int:
    """CLIENT KILL every pub/sub connection (on every master of a cluster)."""
    if isinstance(redis, RedisCluster):
        answers = await redis.execute_command(
            "CLIENT", "KILL", "TYPE", "pubsub", target_nodes=RedisCluster.PRIMARIES
        )
        return sum(int(n) for n in answers.values()) if isinstance(answers, dict) else answers
    return int(await redis.client_kill_filter(_type="pubsub"))


async def test_a_lost_link_resubscribes_and_wakes_everything(any_redis: RedisClient) -> None:
    ids = ids_in_every_shard(1)
    async with Wakeups(any_redis).listen() as wakes:
        await asyncio.wait_for(wakes.subscribed(), timeout=10)
        assert (await next_wake(wakes)).everything
        assert await _kill_pubsub_clients(any_redis) >= 1
        # Whatever was announced meanwhile is lost: the listener says so once
        # it follows the channels again (retries, then a fresh subscription).
        assert (await next_wake(wakes)).everything
        await asyncio.wait_for(wakes.subscribed(), timeout=10)
        await Wakeups(any_redis).publish(ids)
        assert await collect(wakes, set(ids)) == set(ids)


async def test_a_silent_link_is_noticed_and_followed_again(
    redis_cluster: LocalCluster, redis_cluster_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A master that stops answering without closing the socket (a frozen
    process, a partition): the PINGs go unanswered, the link is rebuilt."""
    monkeypatch.setattr(wake_module, "PING_SECONDS", 0.2)
    home = redis_cluster.home
    if home is None:
        pytest.skip("needs the cluster the tests started")
    redis = await open_redis(redis_cluster_url, "cluster")
    ids = ids_in_every_shard(1)
    try:
        async with Wakeups(redis).listen() as wakes:
            await asyncio.wait_for(wakes.subscribed(), timeout=10)
            assert (await next_wake(wakes)).everything
            frozen = redis_cluster_script.master_of(home, key_slot(keys.wake_channel(0).encode()))
            os.kill(frozen.pid, signal.SIGSTOP)
            try:
                await asyncio.sleep(1.0)  # well below the cluster's 2 s node timeout
                assert not wakes._all_followed.is_set()  # the frozen node's link was dropped
            finally:
                os.kill(frozen.pid, signal.SIGCONT)
            await asyncio.wait_for(wakes.subscribed(), timeout=10)
            await Wakeups(redis).publish(ids)
            assert await collect(wakes, set(ids)) == set(ids)
    finally:
        await redis.aclose()
