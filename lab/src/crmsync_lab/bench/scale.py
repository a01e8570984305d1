"""Scale scenarios: ``many`` (scheduling cost per claim as connections grow) and
``fair`` (quiet tenants beside one tenant with a huge backlog).

``many`` needs only Redis: it configures 10, 100 and 1,000 connections with
work queued, then claims round-robin the way a worker does (the process's
``Scheduler`` picks the due connection, ``QueueStore.claim`` runs the claim
script) and reports microseconds per claim, client round trip and Redis's
own time per script call (``INFO commandstats``, server-wide: other clients
of a shared Redis add noise).

``fair`` runs the whole system: ten quiet tenants, each with a connection at
100/s, get 5 new contacts a second each; their commit-to-ack latency is
measured alone, then again while an eleventh tenant's connection (no limit at
the mock) works through a standing backlog.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from crmsync import connections, db
from crmsync.errors import UserError
from crmsync.queue import keys
from crmsync.queue.store import Band, QueueStore
from crmsync.ratelimit import RateWindow
from crmsync.redis_client import RedisClient, open_redis
from crmsync.worker.slots import Scheduler
from crmsync_lab.bench.report import ScenarioResult, percentile, ratio, target
from crmsync_lab.bench.scenarios import cluster_config, rounded
from crmsync_lab.bench.stage import UNLIMITED_SPEC, BenchConfig, Stage
from crmsync_lab.harness.cluster import Cluster

MANY_SIZES = (10, 100, 1000)
MANY_CLAIMS = 3000
QUIET_TENANTS = 10
QUIET_PER_SECOND = 5  # new contacts per quiet tenant per second
FAIR_BACKLOG = 200_000


def _ms() -> float:
    return time.time() * 1000.0


async def _script_stats(redis: RedisClient) -> tuple[int, int]:
    info: dict[str, Any] = await redis.info("commandstats")
    s = info.get("cmdstat_evalsha") or {}
    return int(s.get("calls", 0)), int(s.get("usec", 0))


async def _claim_cost(store: QueueStore, n: int, claims: int) -> dict[str, float]:
    ids = [f"bench-many-{n}-{i:04d}" for i in range(n)]
    per = claims // n + 2
    for cid in ids:
        await store.configure(
            cid,
            [RateWindow(100_000, 1000)],
            breaker_threshold=5,
            breaker_recovery_ms=30_000,
            paused=None,
        )
    await store.enqueue([(cid, f"m{j}", Band.CREATE) for cid in ids for j in range(per)])
    sched = Scheduler()
    sched.add(ids, _ms())
    sched_s = claim_s = 0.0
    calls0, usec0 = await _script_stats(store.redis)
    taken = []
    try:
        for _ in range(claims):
            t0 = time.perf_counter()
            (cid,) = sched.take_due(_ms(), 1)
            t1 = time.perf_counter()
            claim = await store.claim(cid, max_requests=1, batch_size=1, lease_ms=60_000)
            t2 = time.perf_counter()
            sched.done(cid, _ms(), _ms())
            sched_s += (t1 - t0) + (time.perf_counter() - t2)
            claim_s += t2 - t1
            taken.append(claim)
        calls1, usec1 = await _script_stats(store.redis)
        if any(not c.ids for c in taken):
            raise UserError("many: a claim came back empty; the queues were not filled")
    finally:
        for cid in ids:
            await store.drop(cid)
    calls = calls1 - calls0
    return {
        "claim_roundtrip_us": claim_s / claims * 1e6,
        "scheduler_us": sched_s / claims * 1e6,
        "redis_us_per_script_call": (usec1 - usec0) / calls if calls else float("nan"),
    }


async def run_many(cfg: BenchConfig) -> list[ScenarioResult]:
    redis = await open_redis(cfg.redis_url, cfg.redis_mode)
    try:
        store = QueueStore(redis)
        res = ScenarioResult("many", 0.0)
        t0 = time.monotonic()
        for n in MANY_SIZES:
            cfg.say(f"many: {n} connections")
            cost = await _claim_cost(store, n, MANY_CLAIMS)
            for k, v in cost.items():
                res.metrics[f"{k}@{n}"] = round(v, 1)
        res.window_seconds = time.monotonic() - t0
    finally:
        await redis.aclose()
    lo, hi = MANY_SIZES[0], MANY_SIZES[-1]
    growth = ratio(res.metrics[f"claim_roundtrip_us@{hi}"], res.metrics[f"claim_roundtrip_us@{lo}"])
    res.metrics["claim_cost_growth_10_to_1000"] = rounded(growth)
    res.targets = [target("claim_cost_growth_10_to_1000", growth, "<=", 1.5)]
    res.notes.append(
        f"{MANY_CLAIMS} claims per size, one request each, round-robin like a worker; "
        "redis_us_per_script_call is server-wide (other clients add noise)"
    )
    return [res]


def _mock_stalls(first: dict[str, Any], last: dict[str, Any]) -> dict[str, Any]:
    """The mock CRM's event-loop stalls (>= 20 ms) between two of its stats: a
    stalled mock delays every tenant's answers, the quiet ones' too."""
    t0, t1 = first.get("now", 0.0), last.get("now", 0.0)
    ms = [m for end, m in last.get("loop", {}).get("recent", []) if t0 <= end <= t1]
    return {"mock_stalls_over_20ms": len(ms), "mock_stall_ms_total": round(sum(ms), 1)}


async def run_fair(cfg: BenchConfig) -> list[ScenarioResult]:
    args = ["--salesforce", str(QUIET_TENANTS), "--sf-limit", "100/s"]
    ccfg = cluster_config(cfg, "fair", mock_scenario="none", mock_args=args, processes=2)
    backlog = cfg.backlog or FAIR_BACKLOG
    async with Cluster(ccfg) as cluster:
        stage = Stage(cluster, cfg, "fair")
        quiet = stage.ids
        await stage.tenant_per_connection()
        async with cluster.http.post(
            f"{cluster.mock_url}/_control/accounts",
            json={"crm": "salesforce", "account": "big", "limit": UNLIMITED_SPEC},
        ) as r:
            acct = await r.json()
        big = "bench-big"
        await cluster.clear_redis([big])
        spec = connections.parse_connection(
            id=big,
            crm="salesforce",
            account="big",
            base_url=acct["base_url"],
            token=acct["token"],
            tenant="big",
            rate_limits=[UNLIMITED_SPEC],
        )
        conn = await db.connect(cluster.database_url)
        try:
            await connections.add(conn, spec, cluster.keys)
        finally:
            await conn.close()
        rate_all = QUIET_TENANTS * QUIET_PER_SECOND
        async with stage.procs:
            cfg.say("fair: quiet tenants alone")
            since = await stage.db_now()
            await stage.feed(quiet, rate_all, cfg.duration, "alone")
            await stage.wait_idle(within=60, ids=quiet)
            alone = await stage.commit_to_ack(quiet, since)

            cfg.say(f"fair: loading a backlog of {backlog:,} for tenant 'big'")
            t0 = time.monotonic()
            await stage.pause_all([big])
            await stage.insert("big", "big", backlog)
            await stage.wait_outbox_empty()
            await stage.queue_all({big: "big"})
            setup = time.monotonic() - t0
            await stage.resume_all([big])
            await asyncio.sleep(cfg.warmup)
            cfg.say("fair: quiet tenants beside the backlog")
            mock0 = await cluster.mock_stats()
            before = mock0["accounts"]["salesforce/big"]["requests"]
            since = await stage.db_now()
            stage.procs.start()
            t1 = time.monotonic()
            await stage.feed(quiet, rate_all, cfg.duration, "busy")
            busy_s = time.monotonic() - t1
            stage.procs.stop()
            mock1 = await cluster.mock_stats()
            after = mock1["accounts"]["salesforce/big"]["requests"]
            drained = await stage.wait_idle(within=60, ids=quiet)
            busy = await stage.commit_to_ack(quiet, since)
            left = await cluster.redis.zcard(keys.connection(big).ready)
    res = ScenarioResult("fair", cfg.duration)
    p99_alone, p99_busy = percentile(alone, 0.99), percentile(busy, 0.99)
    res.metrics = {
        "quiet_tenants": QUIET_TENANTS,
        "quiet_contacts_per_s": rate_all,
        "big_backlog": backlog,
        "big_setup_s": round(setup, 1),
        "big_req_per_s_beside": round((after - before) / busy_s, 1),
        "big_backlog_left": int(left),
        "alone_samples": len(alone),
        "alone_p50_s": rounded(percentile(alone, 0.5)),
        "alone_p99_s": rounded(p99_alone),
        "busy_samples": len(busy),
        "busy_p50_s": rounded(percentile(busy, 0.5)),
        "busy_p99_s": rounded(p99_busy),
        "quiet_drained": drained,
        **_mock_stalls(mock0, mock1),
    }
    res.metrics["p99_busy_over_alone"] = rounded(ratio(p99_busy, p99_alone))
    res.processes = stage.procs.usage()
    res.targets = [target("p99_busy_over_alone", res.metrics["p99_busy_over_alone"], "<=", 2.0)]
    if not left:
        res.notes.append("the big backlog ran out during the busy phase: it did not stand")
    return [res]
