"""What the claim and ack scripts cost Redis per call: ``claims`` claims of one
request, each acknowledged, on one connection of the windows model (a limit it
never reaches), read from Redis's own ``INFO commandstats`` (server time, not the
client's), which this resets first: give it a Redis of its own.

    .venv/bin/python benchmarks/claim_script.py redis://127.0.0.1:6391/7 [--claims 4000]

Run it from two checkouts alternately (``PYTHONPATH=OTHER/src``) to compare them.
"""

from __future__ import annotations

import argparse
import asyncio
import uuid

from crmsync.queue.store import Band, QueueStore
from crmsync.ratelimit import RateWindow
from crmsync.redis_client import open_redis


async def main(url: str, claims: int) -> None:
    r = await open_redis(url, "standalone")
    store = QueueStore(r, margin=0.04)
    cid = f"cb-{uuid.uuid4().hex[:6]}"
    await store.configure(
        cid,
        [RateWindow(1_000_000, 1000)],
        breaker_threshold=5,
        breaker_recovery_ms=30_000,
        paused=None,
    )
    await store.enqueue([(cid, f"c-{i}", Band.UPDATE) for i in range(claims)])
    await r.config_resetstat()
    for _ in range(claims):
        c = await store.claim(cid, max_requests=1, batch_size=1, lease_ms=30_000)
        await store.ack(c, c.ids)
    stats = (await r.info("commandstats")).get("cmdstat_evalsha", {})
    print(f"evalsha: {stats.get('calls')} calls, {stats.get('usec_per_call')} us per call")
    await store.drop(cid)
    await r.aclose()


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("redis_url")
    p.add_argument("--claims", type=int, default=4000)
    a = p.parse_args()
    asyncio.run(main(a.redis_url, a.claims))
