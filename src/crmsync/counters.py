"""Counters in Redis, shared by every process that exports nothing itself.

Per connection: the workers' counts; ``crmsync status``, the API and the demo
read them; each claim adds its counts with its hand-back (``QueueStore.finish``),
in the same pipelined round trip. Latencies are kept as small histograms so
p50/p99 come out without storing samples.

Per process kind (``relay``, ``reconcile``): counts pushed by ``ProcessCounts``,
so the API's ``/metrics`` exports them whichever process did the work.
"""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Mapping, MutableMapping, Sequence

from crmsync import clock
from crmsync.queue import keys
from crmsync.redis_client import RedisClient

LATENCY_BOUNDS_MS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 30000)
# Sync lag (commit of a change to the CRM's acknowledgement) spans milliseconds
# to an outage's hours: wider buckets than a request's latency.
SYNC_LAG_BOUNDS_MS = (
    50, 100, 250, 500, 1000, 2500, 5000, 10_000, 30_000, 60_000, 300_000, 900_000, 3_600_000,
)  # fmt: skip
SYNC_LAG = "synclag"
SYNC_LAG_SUM = "synclag_sum_ms"

# Counter names a worker writes (the claim script writes its own, e.g. breaker_trips).
CREATED, UPDATED, DELETED, SKIPPED = "created", "updated", "deleted", "skipped"
# Records the CRM already held (matched by email) that now carry our id; not in CREATED.
ADOPTED = "adopted"
RETRIED, DEAD, RATE_LIMITED, REQUESTS = "retried", "dead_lettered", "crm_rate_limited", "requests"
HELD = "held_in_flight"  # requests that waited for the connection's in-flight limit
# Credentials: requests sent again after their token was replaced; pauses for a
# 401 or a token endpoint's refusal. crm/lua/token.lua counts "token_refreshes".
TOKEN_REPLACED, AUTH_PAUSES, TOKEN_REFRESHES = "token_replaced", "auth_pauses", "token_refreshes"


def latency_field(ms: float, prefix: str = "lat", bounds: Sequence[int] = LATENCY_BOUNDS_MS) -> str:
    """Histogram field of ``ms``: ``lat_*`` CRM request latency, ``lag_*`` the
    delay from rate-limit admission to the send (what the limit margin must cover),
    ``synclag_*`` (with ``SYNC_LAG_BOUNDS_MS``) see ``record_sync_lag``."""
    i = bisect.bisect_left(bounds, ms)
    return f"{prefix}_{bounds[i]}" if i < len(bounds) else f"{prefix}_inf"


def buckets(
    hist: Mapping[str, int], prefix: str = "lat", bounds: Sequence[int] = LATENCY_BOUNDS_MS
) -> list[tuple[float, int]]:
    """(upper bound ms, count) of every bucket, ``inf`` last; not cumulative."""
    out = [(float(b), hist.get(f"{prefix}_{b}", 0)) for b in bounds]
    out.append((float("inf"), hist.get(f"{prefix}_inf", 0)))
    return out


def percentile(
    hist: Mapping[str, int],
    q: float,
    prefix: str = "lat",
    bounds: Sequence[int] = LATENCY_BOUNDS_MS,
) -> float | None:
    """Upper bound (ms) of the bucket holding the q-quantile of the histogram."""
    counts = buckets(hist, prefix, bounds)
    total = sum(n for _, n in counts)
    if total == 0:
        return None
    rank = q * total
    seen = 0
    for bound, n in counts:
        seen += n
        if seen >= rank:
            return float(bound)
    return float("inf")


def record_sync_lag(counts: MutableMapping[str, int], committed_ms: float, acked_ms: float) -> None:
    """Count one change acknowledged by the CRM at ``acked_ms`` that was committed
    at ``committed_ms`` (the contact's ``updated_at``), both epoch milliseconds.
    A worker adds it to the counts it hands back with the claim. The clocks of
    PostgreSQL and the worker may disagree a little: a negative lag counts as 0."""
    lag = max(0.0, acked_ms - committed_ms)
    field = latency_field(lag, SYNC_LAG, SYNC_LAG_BOUNDS_MS)
    counts[field] = counts.get(field, 0) + 1
    counts[SYNC_LAG_SUM] = counts.get(SYNC_LAG_SUM, 0) + round(lag)


def sync_lag_percentile(hist: Mapping[str, int], q: float) -> float | None:
    return percentile(hist, q, SYNC_LAG, SYNC_LAG_BOUNDS_MS)


async def read(redis: RedisClient, connection_id: str) -> dict[str, int]:
    return ints_of(await redis.hgetall(keys.connection(connection_id).stats))


def ints_of(raw: Mapping[bytes | str, bytes | str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for k, v in raw.items():
        name = k.decode() if isinstance(k, bytes) else str(k)
        try:
            out[name] = int(v)
        except (TypeError, ValueError):
            continue
    return out


class ProcessCounts:
    """Counts of one kind of process (``relay``, ``reconcile``) gathered in memory
    and added to its Redis hash at most once per ``every`` seconds: a relay moving
    many small batches pays one round trip a second for them, not one a batch."""

    def __init__(self, kind: str, every: float = 1.0) -> None:
        self.key = keys.process_stats(kind)
        self.every = every
        self.pending: Counter[str] = Counter()
        self._pushed_at = float("-inf")

    def add(self, **counts: int) -> None:
        self.pending.update({k: n for k, n in counts.items() if n})

    async def push(self, redis: RedisClient, *, force: bool = False) -> None:
        """Add the pending counts to Redis when due (or ``force``). On a Redis error
        they stay pending for the next push, and the error propagates."""
        now = clock.monotonic()
        if not self.pending or (not force and now - self._pushed_at < self.every):
            return
        batch, self.pending = self.pending, Counter()
        try:
            pipe = redis.pipeline(transaction=False)
            for name, n in batch.items():
                pipe.hincrby(self.key, name, n)
            await pipe.execute()
        except BaseException:
            self.pending.update(batch)
            raise
        self._pushed_at = now


async def read_process(redis: RedisClient, kind: str) -> dict[str, int]:
    return ints_of(await redis.hgetall(keys.process_stats(kind)))
