"""Wake-ups on a real Redis, one server and a cluster: every listener hears the
connections of every wake channel, and a lost link ends in a new subscription
and a wake for everything (messages sent meanwhile are gone)."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Callable

from redis.asyncio.cluster import RedisCluster

from crmsync.queue import keys
from crmsync.queue.wake import Wake, WakeListener, Wakeups
from crmsync.redis_client import RedisClient


def ids_in_every_shard(per_shard: int = 2) -> list[str]:
    """Connection ids that cover every wake channel ``per_shard`` times."""
    out: dict[int, list[str]] = {s: [] for s in range(keys.WAKE_SHARDS)}
    for n in itertools.count():
        cid = f"w-{n}"
        shard = out[keys.wake_shard(cid)]
        if len(shard) < per_shard:
            shard.append(cid)
        if all(len(v) == per_shard for v in out.values()):
            return [c for v in out.values() for c in v]
    raise AssertionError("unreachable")


async def next_wake(wakes: WakeListener, seconds: float = 10.0) -> Wake:
    return await asyncio.wait_for(wakes.__anext__(), timeout=seconds)


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
        await Wakeups(any_redis).publish(["only"])
        assert await next_wake(wakes) == Wake(("only",))


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
