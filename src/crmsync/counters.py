"""Per-connection counters in Redis, shared by every worker process.

``crmsync status``, the API and the demo read them; each claim adds its counts
with its hand-back (``QueueStore.finish``), in the same pipelined round trip.
Latency is kept as a small histogram so p50/p99 come out without storing samples.
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping

from crmsync.queue import keys
from crmsync.redis_client import RedisClient

LATENCY_BOUNDS_MS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 30000)

# Counter names a worker writes (the claim script writes its own, e.g. breaker_trips).
CREATED, UPDATED, DELETED, SKIPPED = "created", "updated", "deleted", "skipped"
RETRIED, DEAD, RATE_LIMITED, REQUESTS = "retried", "dead_lettered", "crm_rate_limited", "requests"
HELD = "held_in_flight"  # requests that waited for the connection's in-flight limit


def latency_field(ms: float, prefix: str = "lat") -> str:
    """Histogram field of ``ms``: ``lat_*`` CRM request latency, ``lag_*`` the
    delay from rate-limit admission to the send (what the limit margin must cover)."""
    i = bisect.bisect_left(LATENCY_BOUNDS_MS, ms)
    return f"{prefix}_{LATENCY_BOUNDS_MS[i]}" if i < len(LATENCY_BOUNDS_MS) else f"{prefix}_inf"


def percentile(hist: Mapping[str, int], q: float, prefix: str = "lat") -> float | None:
    """Upper bound (ms) of the bucket holding the q-quantile of the histogram."""
    buckets: list[tuple[float, int]] = [
        (float(b), hist.get(f"{prefix}_{b}", 0)) for b in LATENCY_BOUNDS_MS
    ]
    buckets.append((float("inf"), hist.get(f"{prefix}_inf", 0)))
    total = sum(n for _, n in buckets)
    if total == 0:
        return None
    rank = q * total
    seen = 0
    for bound, n in buckets:
        seen += n
        if seen >= rank:
            return float(bound)
    return float("inf")


async def read(redis: RedisClient, connection_id: str) -> dict[str, int]:
    raw = await redis.hgetall(keys.connection(connection_id).stats)
    out: dict[str, int] = {}
    for k, v in raw.items():
        name = k.decode() if isinstance(k, bytes) else str(k)
        try:
            out[name] = int(v)
        except (TypeError, ValueError):
            continue
    return out
