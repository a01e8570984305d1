"""Figures an operator watches beside the ledger: queue age, sync lag, budget used,
and the relay's and reconcile's counters.

Read from Redis; ``report.collect`` adds them to the status report (so
``/v1/status``, ``crmsync status`` and the dashboard show the same numbers) and
``/metrics`` exports them with the report's other families.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from crmsync import counters
from crmsync.crm_limits import DAY_MS
from crmsync.queue import keys
from crmsync.queue.store import BAND_SCALE, Band, QueueDepth
from crmsync.redis_client import RedisClient

# Counters of the process kinds that push theirs to Redis (counters.ProcessCounts),
# exported as crmsync_<kind>_<name>_total.
PROCESS_COUNTERS: dict[str, dict[str, str]] = {
    "relay": {
        "moved": "Outbox rows moved to the Redis queues.",
        "enqueued": "Queue entries written by the relay (rows x connections of their tenant).",
        "batches": "Outbox batches the relay moved.",
    },
    "reconcile": {
        "enqueued": "Contacts queued again by reconcile (Redis lost work, or a new connection).",
        "connections": "Connections reconciled (one per connection and run).",
    },
}


async def oldest_enqueued_ms(redis: RedisClient, connection_ids: Sequence[str]) -> dict[str, int]:
    """Enqueue time (Redis ms) of the oldest change waiting in each connection's
    ready set (absent: none), in one pipelined round trip for all of them.

    Scores are ``band * BAND_SCALE + enqueue ms``: the lowest score is the oldest
    of the most urgent band, not the oldest overall, so each band is asked."""
    pipe = redis.pipeline(transaction=False)
    for cid in connection_ids:
        ready = keys.connection(cid).ready
        for band in Band:
            lo = int(band) * BAND_SCALE
            pipe.zrangebyscore(ready, lo, lo + BAND_SCALE - 1, start=0, num=1, withscores=True)
    answers = await pipe.execute() if connection_ids else []
    out: dict[str, int] = {}
    for i, cid in enumerate(connection_ids):
        found = [
            int(hits[0][1]) - int(band) * BAND_SCALE
            for band, hits in zip(Band, answers[i * len(Band) : (i + 1) * len(Band)], strict=True)
            if hits
        ]
        if found:
            out[cid] = min(found)
    return out


def connection_figures(depth: QueueDepth, oldest_ms: int | None) -> dict[str, Any]:
    """What the status report adds per connection to the queue's depth."""
    oldest = oldest_ms
    stats = depth.stats
    lag = counters.buckets(stats, counters.SYNC_LAG, counters.SYNC_LAG_BOUNDS_MS)
    limits = [
        {"limit": w.limit, "window_ms": w.window_ms, "used": depth.in_window.get(w.window_ms, 0)}
        for w in depth.windows
    ]
    budget = depth.budget
    if budget is not None:
        # The CRM's daily budget (every app's use): shown as a day even when compressed.
        limits.append({"limit": budget[1], "window_ms": DAY_MS, "used": budget[0]})
    return {
        "limits": limits,
        "oldest_age_s": None if oldest is None else round(max(0, depth.now_ms - oldest) / 1000, 1),
        "sync_lag_ms": {
            "p50": counters.sync_lag_percentile(stats, 0.50),
            "p99": counters.sync_lag_percentile(stats, 0.99),
            "count": sum(n for _, n in lag),
            "sum": stats.get(counters.SYNC_LAG_SUM, 0),
            # Upper bound ms -> count, not cumulative; the +Inf bucket is count - sum of these.
            "buckets": [[int(b), n] for b, n in lag[:-1]],
        },
    }


async def process_counters(redis: RedisClient) -> dict[str, dict[str, int]]:
    pipe = redis.pipeline(transaction=False)
    for kind in PROCESS_COUNTERS:
        pipe.hgetall(keys.process_stats(kind))
    raw = await pipe.execute()
    return {kind: counters.ints_of(r) for kind, r in zip(PROCESS_COUNTERS, raw, strict=True)}


def families(report: Mapping[str, Any]) -> Iterator[Metric]:
    """The figures of a status report as Prometheus metric families."""
    labels = ["connection", "crm"]
    lag = HistogramMetricFamily(
        "crmsync_sync_lag_seconds",
        "Time from a contact change's commit to the CRM's acknowledgement, per connection.",
        labels=labels,
    )
    oldest = GaugeMetricFamily(
        "crmsync_queue_oldest_age_seconds",
        "Age of the oldest change waiting in the connection's ready queue (0: none).",
        labels=labels,
    )
    limit = GaugeMetricFamily(
        "crmsync_rate_window_limit",
        "Requests the connection may send per rate window.",
        labels=[*labels, "window_seconds"],
    )
    used = GaugeMetricFamily(
        "crmsync_rate_window_used",
        "Requests admitted in the connection's current rate window (daily: the budget spent).",
        labels=[*labels, "window_seconds"],
    )
    for c in report["connections"]:
        lv = [c["id"], c["crm"]]
        if "sync_lag_ms" not in c:  # Redis was unreachable
            continue
        s = c["sync_lag_ms"]
        cumulative, seen = [], 0
        for bound, n in s["buckets"]:
            seen += n
            cumulative.append((f"{bound / 1000:g}", seen))
        cumulative.append(("+Inf", s["count"]))
        lag.add_metric(lv, cumulative, s["sum"] / 1000)
        oldest.add_metric(lv, c["oldest_age_s"] or 0.0)
        for w in c["limits"]:
            window = [*lv, f"{w['window_ms'] / 1000:g}"]
            limit.add_metric(window, w["limit"])
            used.add_metric(window, w["used"])
    yield from (lag, oldest, limit, used)
    processes = report.get("processes")  # absent when Redis was unreachable
    for kind, names in PROCESS_COUNTERS.items():
        for name, help_text in names.items():
            if processes is not None:
                fam = CounterMetricFamily(f"crmsync_{kind}_{name}", help_text)
                fam.add_metric([], processes.get(kind, {}).get(name, 0))
                yield fam
