"""What watching for a Redis loss costs a worker, off the claim path: one pass of
``Healer.watch`` over 50 connections (the markers in one pipelined round trip,
then each connection's long windows copied to PostgreSQL), with every daily
window full of buckets (250, the most it holds), and with short windows only
(the ``seed`` scenario: nothing to copy).

    .venv/bin/python benchmarks/heal_checkpoint.py \\
        [--database-url postgresql://.../crmsync] [--redis-url redis://...]

Uses (drops and recreates) the database ``crmsync_bench_heal`` on that server and
the Redis database given (its connections' keys are deleted first: use a
private server or database).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

import redis.asyncio as aioredis

from crmsync import connections, db, vault
from crmsync.connections import Connection
from crmsync.queue import keys
from crmsync.queue.store import QueueStore
from crmsync.ratelimit import RateWindow, bucket_ms, with_pacing
from crmsync.settings import Settings
from crmsync.worker.heal import Healer

N = 50
ROUNDS = 40
SECOND = RateWindow(100, 1000)
DAY = RateWindow(100_000, 86_400_000)


async def _pass(
    healer: Healer, redis: aioredis.Redis, conns: list[Connection]
) -> tuple[float, float]:
    """(wall ms, this process's CPU ms) of one pass."""
    for c in conns:  # every connection due for its copy
        await redis.delete(keys.connection(c.id).checkpoint_lock)
    t0, c0 = time.perf_counter(), time.process_time()
    await healer.unmarked(conns)
    for c in conns:
        await healer.checkpoint(c)
    return (time.perf_counter() - t0) * 1000, (time.process_time() - c0) * 1000


async def main(database_url: str, redis_url: str) -> None:
    name = "crmsync_bench_heal"
    admin = await db.connect(db_url := database_url.rsplit("/", 1)[0] + "/postgres")
    await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    await admin.execute(f'CREATE DATABASE "{name}"')
    await admin.close()
    url = db_url.rsplit("/", 1)[0] + f"/{name}"
    conn = await db.connect(url)
    await db.migrate(conn)
    await conn.close()
    pool = await db.create_pool(url)
    redis = aioredis.from_url(redis_url)
    ring = vault.keyring(Settings().secret_key)
    try:
        for label, windows in (("daily + 100/s", (SECOND, DAY)), ("100/s only", (SECOND,))):
            await pool.execute("DELETE FROM connections")
            store = QueueStore(redis)
            conns = []
            for i in range(N):
                c = Connection(
                    f"hb-{i:02d}",
                    "default",
                    "hubspot",
                    f"a{i}",
                    "http://127.0.0.1:1",
                    "t",
                    windows,
                    {},
                )
                await connections.add(pool, c, ring)
                for w in with_pacing(windows):
                    await redis.delete(keys.connection(c.id).window(w.window_ms))
                await store.configure(
                    c.id, windows, breaker_threshold=5, breaker_recovery_ms=30_000, paused=None
                )
                conns.append(c)
            healer = Healer(pool, store, margin=store.margin)
            for c in conns:
                await healer.heal(c)  # first mark
                if DAY in windows:  # the day's window full of buckets, as after a busy day
                    _, now, _ = await store.snapshot(c.id, [])
                    g = bucket_ms(DAY)
                    buckets = {str(now // g - j): 3 for j in range(250)}
                    await redis.hset(keys.connection(c.id).window(DAY.window_ms), mapping=buckets)
            runs = [await _pass(healer, redis, conns) for _ in range(ROUNDS)]
            wall = statistics.median(r[0] for r in runs)
            cpu = statistics.median(r[1] for r in runs)
            copied = await pool.fetchval("SELECT count(*) FROM rate_checkpoints")
            print(
                f"{label}: one pass over {N} connections: {wall:.1f} ms wall, {cpu:.1f} ms "
                f"worker CPU (medians of {ROUNDS}); every 2 s that is {cpu / 20:.2f}% of a "
                f"core; {copied} windows copied"
            )
    finally:
        await redis.aclose()
        await pool.close()


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--database-url", default=Settings().database_url)
    p.add_argument("--redis-url", default=Settings().redis_url)
    a = p.parse_args()
    asyncio.run(main(a.database_url, a.redis_url))
