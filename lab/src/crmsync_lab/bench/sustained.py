"""``sustained``: the seed's 3,500 changes a second for minutes on one PostgreSQL.

The seed's 50 connections (25 Salesforce at 100/s, 25 HubSpot at 50/s), a tenant
each, single-record mode, API + relay + two workers. A writer changes contacts
by plain SQL at ``RATE`` changes a second (half new contacts, half updates of
contacts written at least ``UPDATE_AGE_S`` before), spread over the tenants in
proportion to their connection's limit. Every ``SAMPLE_S`` seconds it samples
what must stay flat for the service to run for months: outbox rows, the time of
the worker's ledger statement (``worker_record`` for 100 rows of a probe
connection nobody syncs), and per table (outbox, sync_state, contacts) live and
dead tuples, total size and autovacuum runs (the tables carry the settings of
``scripts/autovacuum.sql``), beside the records the workers
sent and what waits in Redis. Samples go to ``<run dir>/sustained.json``.
``--duration`` is the writing time (default 600 s).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
from collections import deque
from pathlib import Path
from typing import Any

import asyncpg

from crmsync import connections, db
from crmsync.errors import UserError
from crmsync.model import LedgerWrite
from crmsync.queue.store import QueueStore
from crmsync_lab.bench.report import ScenarioResult
from crmsync_lab.bench.sampler import counter_totals
from crmsync_lab.bench.scenarios import cluster_config
from crmsync_lab.bench.stage import BenchConfig, Stage
from crmsync_lab.harness.cluster import Cluster

RATE = 3500.0  # changes a second, the seed's load
TICK_S = 0.1
SAMPLE_S = 30.0
UPDATE_AGE_S = 5.0  # updates touch contacts at least this old (most already synced)
PROBE = "bench-probe"  # a connection of its own tenant, paused: only the probe writes its ledger
PROBE_ROWS = 100
TABLES = ("outbox", "sync_state", "contacts")
# The per-table autovacuum settings README recommends, applied before writing.
AUTOVACUUM_SQL = Path(__file__).resolve().parents[4] / "scripts" / "autovacuum.sql"

TABLE_STATS = """
SELECT relname, n_live_tup, n_dead_tup, autovacuum_count, vacuum_count,
       pg_total_relation_size(relid) AS bytes
FROM pg_stat_user_tables WHERE relname = ANY($1::text[])
"""
INSERT = """
INSERT INTO contacts (id, tenant, email, first_name, last_name, company, status)
SELECT u.id, u.tenant, u.id || '@sustained.example.com', 'Sus', 'Tained', 'Acme Corp', 'active'
FROM unnest($1::text[], $2::text[]) AS u(id, tenant)
"""
UPDATE = """
UPDATE contacts c SET first_name = $3
FROM unnest($1::text[], $2::text[]) AS u(tenant, id) WHERE (c.tenant, c.id) = (u.tenant, u.id)
"""


class Writer:
    """Changes at ``rate`` a second until stopped; counts what it wrote."""

    def __init__(self, pool: asyncpg.Pool[Any], weights: dict[str, float], rate: float) -> None:
        self.pool = pool
        self.tenants = list(weights)
        self.weights = [weights[t] for t in self.tenants]
        self.rate = rate
        self.written = 0
        self.behind_ticks = 0  # ticks that started late (the writer could not keep up)
        self.seq = 0
        self.old: deque[tuple[float, list[tuple[str, str]]]] = deque()  # (at, (tenant, id)s)
        self.pickable: list[tuple[str, str]] = []
        self.rng = random.Random(7)

    async def run(self, stop: asyncio.Event) -> None:
        start = time.monotonic()
        tick = 0
        while not stop.is_set():
            tick += 1
            await self._once()
            delay = start + tick * TICK_S - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            else:
                self.behind_ticks += 1

    async def _once(self) -> None:
        n = int(self.rate * TICK_S)
        now = time.monotonic()
        while self.old and now - self.old[0][0] >= UPDATE_AGE_S:
            self.pickable.extend(self.old.popleft()[1])
        updates = min(n // 2, len(self.pickable))
        tenants = self.rng.choices(self.tenants, self.weights, k=n - updates)
        ids = [f"{t}~{self.seq + i}" for i, t in enumerate(tenants)]
        self.seq += len(ids)
        changed = self.rng.sample(self.pickable, updates) if updates else []
        async with self.pool.acquire() as pg, pg.transaction():
            await pg.execute(INSERT, ids, tenants)
            if changed:
                await pg.execute(
                    UPDATE, [t for t, _ in changed], [i for _, i in changed], f"U{self.seq}"
                )
        self.old.append((now, list(zip(tenants, ids, strict=True))))
        self.written += len(ids) + len(changed)


async def probe_ledger(pool: asyncpg.Pool[Any], version: int) -> float:
    """Milliseconds of one ``worker_record`` of PROBE_ROWS rows, as a worker writes it."""
    rows = [
        LedgerWrite(f"probe-{i}", f"X{i}", version, "synced", None, 0, None)
        for i in range(PROBE_ROWS)
    ]
    t0 = time.perf_counter()
    await pool.execute(db.q("worker_record"), PROBE, *zip(*rows, strict=True))
    return (time.perf_counter() - t0) * 1000.0


async def sample(
    cluster: Cluster, ids: list[str], t0: float, version: int, writer: Writer
) -> dict[str, Any]:
    pool = cluster.pool
    probes = [await probe_ledger(pool, version * 10 + i) for i in range(5)]
    tables = {r["relname"]: dict(r) for r in await pool.fetch(TABLE_STATS, list(TABLES))}
    for t in tables.values():
        t.pop("relname")
    counts = await counter_totals(cluster.redis, ids)
    store = QueueStore(cluster.redis)
    ready = 0
    for cid in ids:
        ready += (await store.depth(cid)).ready
    return {
        "t": round(time.monotonic() - t0, 1),
        "written": writer.written,
        "writer_behind_ticks": writer.behind_ticks,
        "outbox_rows": int(await pool.fetchval("SELECT count(*) FROM outbox")),
        "ledger_ms_p50": round(sorted(probes)[2], 2),
        "ledger_ms_max": round(max(probes), 2),
        "requests": sum(c.get("requests", 0) for c in counts.values()),
        "ready_in_redis": ready,
        "tables": tables,
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }


async def run_sustained(cfg: BenchConfig) -> list[ScenarioResult]:
    ccfg = cluster_config(cfg, "sustained", mock_scenario="seed", processes=2)
    async with Cluster(ccfg) as cluster:
        stage = Stage(cluster, cfg, "sustained")
        ids = stage.ids
        await stage.tenant_per_connection()
        if not AUTOVACUUM_SQL.exists():
            raise UserError(f"{AUTOVACUUM_SQL} is missing: run the bench from a crmsync checkout")
        await cluster.pool.execute(AUTOVACUUM_SQL.read_text())
        # Storage parameters act only where the server's autovacuum runs at all.
        autovacuum = str(await cluster.pool.fetchval("SHOW autovacuum"))
        # The probe's ledger rows: a connection of a tenant without contacts.
        first = cluster.connections[0]
        spec = connections.parse_connection(
            id=PROBE,
            crm=first.crm,
            account=first.account,
            base_url=first.base_url,
            token=first.token,
            tenant=PROBE,
            rate_limits=[first.rate_limit],
        )
        async with cluster.pool.acquire() as pg:
            await connections.add(pg, spec, cluster.keys)
        limits = {c.id: float(c.rate_limit.split("/")[0]) for c in cluster.connections}
        writer = Writer(cluster.pool, limits, RATE)
        stop = asyncio.Event()
        samples: list[dict[str, Any]] = []
        t0 = time.monotonic()
        task = asyncio.create_task(writer.run(stop))
        try:
            version = 1
            while time.monotonic() - t0 < cfg.duration:
                await asyncio.sleep(min(SAMPLE_S, max(0.0, cfg.duration - (time.monotonic() - t0))))
                cluster.check_alive()
                samples.append(await sample(cluster, ids, t0, version, writer))
                version += 1
                cfg.say(f"sustained: {json.dumps(samples[-1])}")
        finally:
            stop.set()
            await task
        run_dir = cluster.run_dir
    out = Path(run_dir) / "sustained.json"
    out.write_text(json.dumps(samples, indent=1))
    cfg.say(f"sustained: samples in {out}")
    res = summarize(samples, cfg.duration)
    res.metrics["server_autovacuum"] = autovacuum
    if autovacuum != "on":
        res.notes.append(
            "the server runs with autovacuum off: the per-table settings cannot act; "
            "dead tuples of the tables the relay does not vacuum grow with the updates"
        )
    return [res]


def summarize(samples: list[dict[str, Any]], seconds: float) -> ScenarioResult:
    """First, middle and last sample of each figure, and the rates over the run."""
    res = ScenarioResult("sustained", seconds)
    if len(samples) < 2:
        return res
    a, b = samples[0], samples[-1]
    span = b["t"] - a["t"]
    res.metrics["changes_per_s"] = round((b["written"] - a["written"]) / span, 1)
    res.metrics["sent_per_s"] = round((b["requests"] - a["requests"]) / span, 1)
    for key in ("outbox_rows", "ledger_ms_p50", "ready_in_redis", "load_avg_1m"):
        res.metrics[key] = " / ".join(str(s[key]) for s in (a, samples[len(samples) // 2], b))
    for table in TABLES:
        for col in ("n_dead_tup", "bytes", "autovacuum_count"):
            mid = samples[len(samples) // 2]
            values = [s["tables"].get(table, {}).get(col) for s in (a, mid, b)]
            res.metrics[f"{table}.{col}"] = " / ".join(str(v) for v in values)
    res.notes.append("figures: first / middle / last sample")
    return res
