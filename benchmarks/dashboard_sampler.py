"""What the dashboard's figures cost Redis: one sample of every connection (each API
process takes one a second) and the status report's per-connection Redis reads with
and without the figures (queue age, sync lag, budget used), side by side.

    .venv/bin/python benchmarks/dashboard_sampler.py [--redis-url redis://127.0.0.1:6379/5]
        [--connections 50]

The Redis database given is flushed before and after.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

import redis.asyncio as aioredis

from crmsync import figures, timeseries
from crmsync.queue import keys
from crmsync.queue.store import QueueStore


def _ms(samples: list[float]) -> str:
    ordered = sorted(samples)
    p95 = ordered[int(len(ordered) * 0.95)]
    return f"median {statistics.median(ordered):.2f} ms, p95 {p95:.2f} ms"


async def main(url: str, n: int) -> None:
    r = aioredis.from_url(url)
    await r.flushdb()
    store = QueueStore(r)
    conns = [
        {"id": f"c{i:03d}", "rate_limits": [{"limit": 100, "window_ms": 1000}]} for i in range(n)
    ]
    for c in conns:
        await store.configure(
            c["id"], [], breaker_threshold=5, breaker_recovery_ms=30_000, paused=None
        )
        await r.hset(keys.connection(c["id"]).stats, mapping={"requests": 1000, "synclag_500": 10})
        await store.enqueue([(c["id"], f"x{j}", j % 3) for j in range(1000)])
    sampler = timeseries.Sampler()
    sample: list[float] = []
    for _ in range(200):
        t0 = time.perf_counter()
        await sampler.sample(r, conns)
        sample.append((time.perf_counter() - t0) * 1000)
    plain: list[float] = []
    full: list[float] = []
    for _ in range(30):  # alternated, so both see the same machine
        t0 = time.perf_counter()
        for c in conns:
            await store.depth(c["id"])
        plain.append((time.perf_counter() - t0) * 1000)
        t0 = time.perf_counter()
        oldest = await figures.oldest_enqueued_ms(r, [c["id"] for c in conns])
        for c in conns:
            figures.connection_figures(await store.depth(c["id"]), oldest.get(c["id"]))
        full.append((time.perf_counter() - t0) * 1000)
    print(f"one sample of {n} connections: {_ms(sample)}")
    ratio = statistics.median(full) / statistics.median(plain)
    print(f"status report, Redis reads of {n} connections: depth {_ms(plain)}; ")
    print(f"  depth + figures {_ms(full)}; ratio of medians {ratio:.2f}")
    await r.flushdb()
    await r.aclose()


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--redis-url", default="redis://127.0.0.1:6379/5")
    p.add_argument("--connections", type=int, default=50)
    a = p.parse_args()
    asyncio.run(main(a.redis_url, a.connections))
