"""One Redis server beside a Redis Cluster, in one run: the queue's hot path and
wake-up latency.

    .venv/bin/python benchmarks/redis_modes.py --standalone redis://127.0.0.1:6379/0 \\
        --cluster "$(scripts/redis_cluster.py start | tail -1)"

Rounds alternate between the modes so a busy machine hurts both alike; each
figure is the median of the rounds' medians, and the last column is cluster /
standalone. Measured:

- ``claim+ack``: one claim then its hand-back (``finish``: ack, counters), one
  connection, back to back: the worker's two round trips per claim.
- ``enqueue 50x100``: one relay batch, 5,000 ids over 50 connections (a
  pipeline that a cluster client splits per node).
- ``wake``: publish one connection id, until a listener yields it.
- ``wake via PUBLISH``: the cluster alternative to sharded channels: plain
  PUBLISH, which the cluster bus copies to every node, heard on another node.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster

from crmsync.queue import keys
from crmsync.queue.store import Band, QueueStore
from crmsync.queue.wake import WakeListener
from crmsync.ratelimit import RateWindow
from crmsync.redis_client import RedisClient, open_redis
from crmsync.settings import RedisMode

Probe = Callable[[], Awaitable[float]]  # one timed operation, microseconds


async def _configured(store: QueueStore, cids: list[str]) -> None:
    for cid in cids:
        await store.configure(
            cid, [RateWindow(10**9, 1000)], breaker_threshold=5, breaker_recovery_ms=1, paused=None
        )


async def claim_ack(store: QueueStore, made: list[str]) -> Probe:
    cid = f"bench-{uuid.uuid4().hex[:6]}"
    await _configured(store, [cid])
    made.append(cid)

    async def once() -> float:
        await store.enqueue([(cid, "c", Band.UPDATE)])
        t0 = time.perf_counter()
        c = await store.claim(cid, max_requests=1, batch_size=1, lease_ms=30_000)
        await store.finish(c, ack=c.ids, counters={"updated": 1})
        return (time.perf_counter() - t0) * 1e6

    return once


async def enqueue_batch(store: QueueStore, made: list[str]) -> Probe:
    cids = [f"bench-{uuid.uuid4().hex[:6]}" for _ in range(50)]
    await _configured(store, cids)
    made += cids
    n = 0

    async def once() -> float:
        nonlocal n
        n += 1
        items = [(cid, f"e{n}-{i}", Band.UPDATE) for cid in cids for i in range(100)]
        t0 = time.perf_counter()
        await store.enqueue(items)
        return (time.perf_counter() - t0) * 1e6

    return once


async def wake(store: QueueStore, listener: WakeListener) -> Probe:
    await listener.subscribed()
    n = 0

    async def once() -> float:
        nonlocal n
        n += 1
        cid = f"w{n}"
        t0 = time.perf_counter()
        await store.wakeups.publish([cid])
        while cid not in (await listener.__anext__()).ids:
            pass
        return (time.perf_counter() - t0) * 1e6

    return once


async def wake_by_publish(cluster: RedisCluster) -> tuple[Probe, Callable[[], Awaitable[None]]]:
    """PUBLISH through the client's default node, heard on another master."""
    target = cluster.get_default_node()
    other = next(n for n in cluster.get_primaries() if n.name != target.name)
    sub = aioredis.Redis(host=other.host, port=int(other.port))
    pubsub = sub.pubsub()
    await pubsub.subscribe(keys.WAKE_CHANNEL)
    await pubsub.get_message(timeout=2)  # the confirmation
    n = 0

    async def once() -> float:
        nonlocal n
        n += 1
        text = f"w{n}"
        t0 = time.perf_counter()
        await cluster.publish(keys.WAKE_CHANNEL, text)
        while True:
            msg = await pubsub.get_message(timeout=5)
            if msg is not None and msg["type"] == "message" and msg["data"] == text.encode():
                return (time.perf_counter() - t0) * 1e6

    async def close() -> None:
        await pubsub.aclose()
        await sub.aclose()

    return once, close


async def main(standalone_url: str, cluster_url: str, rounds: int, per_round: int) -> None:
    modes: dict[RedisMode, str] = {"standalone": standalone_url, "cluster": cluster_url}
    clients: dict[RedisMode, RedisClient] = {m: await open_redis(u, m) for m, u in modes.items()}
    stores = {m: QueueStore(c) for m, c in clients.items()}
    listeners = {m: s.wakeups.listen() for m, s in stores.items()}
    probes: dict[str, dict[str, Probe]] = {"claim+ack": {}, "enqueue 50x100": {}, "wake": {}}
    made: dict[RedisMode, list[str]] = {m: [] for m in modes}
    for m, store in stores.items():
        probes["claim+ack"][m] = await claim_ack(store, made[m])
        probes["enqueue 50x100"][m] = await enqueue_batch(store, made[m])
        probes["wake"][m] = await wake(store, listeners[m])
    cluster = clients["cluster"]
    assert isinstance(cluster, RedisCluster)
    by_publish, close_publish = await wake_by_publish(cluster)
    probes["wake via PUBLISH"] = {"cluster": by_publish}

    medians: dict[str, dict[str, list[float]]] = {k: {} for k in probes}
    load0 = os.getloadavg()[0]
    for _ in range(rounds):
        for name, probe_of in probes.items():
            for mode_name, probe in probe_of.items():
                runs = 5 if name.startswith("enqueue") else per_round
                samples = [await probe() for _ in range(runs)]
                medians[name].setdefault(mode_name, []).append(statistics.median(samples))

    load = os.getloadavg()[0]
    print(f"{rounds} rounds x {per_round}; 1-minute load average {load0:.2f} -> {load:.2f}")
    print(f"{'us (median of round medians)':<28}{'standalone':>12}{'cluster':>12}{'ratio':>8}")
    for name, rounds_of in medians.items():
        single = statistics.median(rounds_of["standalone"]) if "standalone" in rounds_of else None
        clustered = statistics.median(rounds_of["cluster"])
        ratio = f"{clustered / single:8.2f}" if single else f"{'':>8}"
        single_text = f"{single:12.0f}" if single else f"{'-':>12}"
        print(f"{name:<28}{single_text}{clustered:12.0f}{ratio}")

    for mode, cids in made.items():
        for cid in cids:
            await stores[mode].drop(cid)
    await close_publish()
    for listener in listeners.values():
        await listener.aclose()
    for client in clients.values():
        await client.aclose()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--standalone", required=True, help="URL of one Redis server")
    parser.add_argument("--cluster", required=True, help="URL of a node of a Redis Cluster")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--per-round", type=int, default=300)
    args = parser.parse_args()
    asyncio.run(main(args.standalone, args.cluster, args.rounds, args.per_round))
