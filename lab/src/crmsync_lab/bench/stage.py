"""Setting the stage on a running ``Cluster``: backlogs, pauses, measured windows.

The harness (``crmsync_lab.harness.Cluster``) starts the mock CRM, the API, the
relay and the workers as processes; this module adds what a benchmark needs
on top: a standing backlog loaded set-based in PostgreSQL and queued while
the connections are paused (so the window measures the workers, not the
load), then one measured window read at the mock (arrivals, violations),
the workers' Redis counters and every process's CPU.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from crmsync import connections, db
from crmsync.capture.reconcile import reconcile_connection
from crmsync.counters import CREATED, DELETED, REQUESTS, SKIPPED, UPDATED
from crmsync.errors import UserError
from crmsync.queue import keys
from crmsync.queue.store import QueueStore
from crmsync.ratelimit import parse_rate_limit
from crmsync.settings import RedisMode
from crmsync_lab.bench.profile import Profiler
from crmsync_lab.bench.report import ConnRate, rate
from crmsync_lab.bench.sampler import ProcWatch, RateWatch, counter_totals
from crmsync_lab.harness.cluster import Cluster, ConnectionInfo
from crmsync_lab.queries import q

PAUSE_REASON = "benchmark: loading the backlog"
INSERT_CHUNK = 50_000
SYNCED_FIELDS = (CREATED, UPDATED, DELETED, SKIPPED)
# A mock limit this high stands for "no limit" (the connection still needs one).
UNLIMITED = 1_000_000
UNLIMITED_SPEC = f"{UNLIMITED}/s"


@dataclass
class BenchConfig:
    database_url: str
    redis_url: str
    redis_mode: RedisMode = "standalone"
    # A Redis Cluster seed URL: seed, seed-load and batch run on it too (suite.run).
    cluster_url: str | None = None
    fresh_database: bool = True  # drop and recreate database_url's database first
    duration: float = 0.0  # measured window, seconds (0: the scenario's default)
    warmup: float = 5.0  # seconds of sending before the window opens
    processes: int | None = None  # worker processes (None: the scenario's own)
    concurrency: int = 200  # CRM requests in flight per worker process
    latency_ms: float | None = None  # mock latency (None: the scenario's own)
    run_dir: Path | None = None  # process logs (default: the harness's)
    plot_dir: Path | None = None
    profile_dir: Path | None = None  # py-spy the workers during the window
    backlog: int | None = None  # fair: the big tenant's backlog (None: the scenario's own)
    say: Callable[[str], None] = field(default=lambda _msg: None)  # progress lines


@dataclass
class Measured:
    """One measured window."""

    seconds: float
    mock0: dict[str, Any]
    mock1: dict[str, Any]
    counters0: dict[str, dict[str, int]]
    counters1: dict[str, dict[str, int]]
    series: dict[str, list[float]] = field(default_factory=dict)
    left: dict[str, int] = field(default_factory=dict)  # ready ids at the window's end
    profile: dict[str, Any] = field(default_factory=dict)  # per worker (--profile)
    mock_loop: dict[str, Any] = field(default_factory=dict)  # the mock's stalls (whole run)

    def violations_after_stalls(self, min_stall_ms: float, within_s: float = 1.0) -> int:
        """Violations (whole run, the first few per account) that came within
        ``within_s`` after the mock's event loop resumed from a stall of at least
        ``min_stall_ms``: arrivals it counted late, bunched with later ones."""
        ends = self._stall_ends(min_stall_ms)
        times = [t for a in self.mock1.values() for t in a.get("violations_at", [])]
        return sum(1 for t in times if any(0.0 <= t - e <= within_s for e in ends))

    def mock_stalls(self, min_stall_ms: float) -> int:
        return len(self._stall_ends(min_stall_ms))

    def _stall_ends(self, min_stall_ms: float) -> list[float]:
        """When the mock's loop resumed from each stall of at least ``min_stall_ms``."""
        return [end for end, ms in self.mock_loop.get("recent", []) if ms >= min_stall_ms]

    def arrivals(self, c: ConnectionInfo) -> int:
        key = f"{c.crm}/{c.account}"
        return int(self.mock1[key]["requests"]) - int(self.mock0[key]["requests"])

    def counter(self, cid: str, names: Sequence[str]) -> int:
        a, b = self.counters0.get(cid, {}), self.counters1.get(cid, {})
        return sum(b.get(n, 0) - a.get(n, 0) for n in names)

    def synced(self, ids: Sequence[str]) -> int:
        return sum(self.counter(cid, SYNCED_FIELDS) for cid in ids)

    def worker_requests(self, ids: Sequence[str]) -> int:
        return sum(self.counter(cid, (REQUESTS,)) for cid in ids)


class Stage:
    """Benchmark helpers bound to one running cluster."""

    def __init__(self, cluster: Cluster, cfg: BenchConfig, name: str) -> None:
        self.cluster = cluster
        self.cfg = cfg
        self.name = name
        self._fed: dict[tuple[str, str], int] = {}  # (prefix, tenant) -> contacts fed
        self.store = QueueStore(cluster.redis)
        self.procs = ProcWatch(database_name(cluster.database_url))
        self.procs.add("mock-crm", cluster.mock.pid if cluster.mock else None)
        self.procs.add("api", cluster.server.pid if cluster.server else None)
        self.procs.add("relay", cluster.relay.pid if cluster.relay else None)
        for w in cluster.workers:
            self.procs.add(w.name, w.pid)

    @property
    def ids(self) -> list[str]:
        return [c.id for c in self.cluster.connections]

    # -- the backlog -------------------------------------------------------------
    async def pause_all(self, ids: Sequence[str] | None = None) -> None:
        """Pause in PostgreSQL (workers mirror it) and in Redis at once."""
        ids = list(self.ids if ids is None else ids)
        conn = await db.connect(self.cluster.database_url)
        try:
            for cid in ids:
                await connections.pause(conn, cid, PAUSE_REASON)
        finally:
            await conn.close()
        for cid in ids:
            await self.store.pause(cid, PAUSE_REASON)

    async def resume_all(self, ids: Sequence[str] | None = None) -> None:
        ids = list(self.ids if ids is None else ids)
        conn = await db.connect(self.cluster.database_url)
        try:
            for cid in ids:
                await connections.resume(conn, cid)
        finally:
            await conn.close()
        for cid in ids:
            await self.store.resume(cid)

    async def tenant_per_connection(self) -> None:
        """Each connection its own tenant; give the relay and workers time to reload."""
        await self.cluster.pool.fetch(q("bench_tenant_per_connection"), self.ids)
        await asyncio.sleep(1.0)

    async def insert(self, tenant: str, prefix: str, count: int, start: int = 1) -> None:
        """``count`` contacts of ``tenant``, set-based in chunks."""
        first = start
        last = start + count - 1
        while first <= last:
            upto = min(last, first + INSERT_CHUNK - 1)
            await self.cluster.pool.execute(q("bench_insert_contacts"), tenant, prefix, first, upto)
            first = upto + 1

    async def wait_outbox_empty(self, within: float = 600.0) -> None:
        deadline = time.monotonic() + within
        while await self.cluster.pool.fetchval(q("bench_outbox_pending")):
            self.cluster.check_alive()
            if time.monotonic() > deadline:
                raise UserError(f"the relay did not drain the outbox within {within:g}s")
            await asyncio.sleep(0.5)

    async def queue_all(self, tenants: Mapping[str, str]) -> None:
        """Queue every unsynced contact of each connection (``reconcile``): whatever
        the relay already queued coalesces, whatever it dropped is queued now."""
        for cid, tenant in tenants.items():
            await reconcile_connection(self.cluster.pool, self.store, cid, tenant)

    async def ready(self) -> dict[str, int]:
        pipe = self.cluster.redis.pipeline(transaction=False)
        for cid in self.ids:
            pipe.zcard(keys.connection(cid).ready)
        return dict(zip(self.ids, [int(n) for n in await pipe.execute()], strict=True))

    async def load_backlog(
        self, per_connection: Mapping[str, int], tenants: Mapping[str, str]
    ) -> float:
        """Paused: insert ``per_connection[id]`` contacts into each connection's tenant
        (shared tenants get the largest count once) and queue them; they stay paused
        until ``resume_all``. Returns the seconds it took."""
        t0 = time.monotonic()
        await self.pause_all()
        by_tenant: dict[str, int] = {}
        for cid, n in per_connection.items():
            by_tenant[tenants[cid]] = max(by_tenant.get(tenants[cid], 0), n)
        for tenant, n in by_tenant.items():
            await self.insert(tenant, f"b-{tenant}", n)
        await self.wait_outbox_empty()
        await self.queue_all(tenants)
        depth = await self.ready()
        short = {
            cid: (depth.get(cid, 0), n)
            for cid, n in per_connection.items()
            if depth.get(cid, 0) < n
        }
        if short:
            raise UserError(f"backlog not queued in full (ready, wanted): {short}")
        return time.monotonic() - t0

    async def wait_idle(self, within: float = 300.0, ids: Sequence[str] | None = None) -> bool:
        """Until the outbox and the queues (ready, leased, delayed) of ``ids`` are empty."""
        ids = list(ids if ids is not None else self.ids)
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            self.cluster.check_alive()
            pipe = self.cluster.redis.pipeline(transaction=False)
            for cid in ids:
                ck = keys.connection(cid)
                for k in (ck.ready, ck.leases, ck.delayed):
                    pipe.zcard(k)
            queued = sum(int(n) for n in await pipe.execute())
            if not queued and not await self.cluster.pool.fetchval(q("bench_outbox_pending")):
                return True
            await asyncio.sleep(0.25)
        return False

    async def feed(
        self, tenants: Sequence[str], per_second: float, seconds: float, prefix: str
    ) -> int:
        """Insert contacts at ``per_second`` in all (spread over ``tenants``) for
        ``seconds``, one small statement per tenant every 0.1 s; returns how many."""
        step = 0.1
        made = dict.fromkeys(tenants, 0)
        done = 0
        t0 = time.monotonic()
        tick = 0
        while time.monotonic() - t0 < seconds:
            tick += 1
            due = int(tick * step * per_second) - done
            for i in range(max(0, due)):
                made[tenants[(done + i) % len(tenants)]] += 1
            for tenant in tenants:
                n = made[tenant] - self._fed.get((prefix, tenant), 0)
                if n > 0:
                    first = self._fed.get((prefix, tenant), 0) + 1
                    await self.insert(tenant, f"{prefix}-{tenant}", n, start=first)
                    self._fed[(prefix, tenant)] = made[tenant]
            done += max(0, due)
            await asyncio.sleep(max(0.0, t0 + tick * step - time.monotonic()))
        return done

    async def commit_to_ack(self, ids: Sequence[str], since: Any) -> list[float]:
        """Seconds from commit to recorded CRM acknowledgement, contacts changed since."""
        rows = await self.cluster.pool.fetch(q("bench_commit_to_ack"), list(ids), since)
        return [float(r["seconds"]) for r in rows]

    async def db_now(self) -> Any:
        return await self.cluster.pool.fetchval(q("bench_now"))

    # -- a measured window -------------------------------------------------------
    async def measure(self, seconds: float) -> Measured:
        """Mock stats, counters and CPU at both edges of ``seconds``; series in between."""
        ids = self.ids
        rates = RateWatch(self.cluster.redis, ids, REQUESTS)
        c0 = await counter_totals(self.cluster.redis, ids)
        mock0 = (await self.cluster.mock_stats())["accounts"]
        profiler = None
        if self.cfg.profile_dir is not None:
            profiler = Profiler(self.cfg.profile_dir, self.name)
            pids = {w.name: w.pid for w in self.cluster.workers if w.pid is not None}
            await profiler.start(pids, seconds)
        self.procs.start()
        t0 = time.monotonic()
        rates.start()
        await asyncio.sleep(seconds)
        self.cluster.check_alive()
        elapsed = time.monotonic() - t0
        self.procs.stop()
        await rates.stop()
        c1 = await counter_totals(self.cluster.redis, ids)
        end = await self.cluster.mock_stats()
        left = await self.ready()
        profile = await profiler.finish() if profiler is not None else {}
        return Measured(
            elapsed, mock0, end["accounts"], c0, c1, rates.series(), left, profile, end["loop"]
        )

    def conn_rates(self, m: Measured, limits: Mapping[str, float | None]) -> list[ConnRate]:
        out = []
        for c in self.cluster.connections:
            s = m.mock1[f"{c.crm}/{c.account}"]
            out.append(
                ConnRate(
                    id=c.id,
                    crm=c.crm,
                    limit_per_s=limits.get(c.id),
                    sent_per_s=rate(0, m.arrivals(c), 0, m.seconds),
                    violations=int(s.get("violations", 0)),
                    max_in_any_1s=int(s.get("max_in_any_1s", 0)),
                    series=m.series.get(c.id, []),
                )
            )
        return out


def limit_per_second(info: ConnectionInfo) -> float | None:
    """The connection's limit in requests per second (None: effectively unlimited)."""
    w = parse_rate_limit(info.rate_limit)
    value = w.limit * 1000.0 / w.window_ms
    return None if value >= UNLIMITED else value


def database_name(url: str) -> str:
    return url.rpartition("/")[2].partition("?")[0]
