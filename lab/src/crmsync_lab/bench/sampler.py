"""Measuring while a scenario runs: CPU and memory per process, sends per second.

``ProcWatch`` samples every watched process (and the children it spawned)
every 0.5 s for peak RSS, and reads user+system CPU at the window's start and
end. PostgreSQL and Redis are not our children; they are found by name and
reported too, so readers see where the machine's CPU went: PostgreSQL's
auxiliary processes and the backends of the bench's database (exited
backends' time is not counted), and the whole Redis server (shared).

``RateWatch`` reads the workers' per-connection Redis counters once a second
(cheap: one pipelined HGET per connection) for the per-second series of the
charts; the totals of a window come from the mock's own count of arrivals,
read only at the window's edges because its stats walk every stored record.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import psutil

from crmsync import counters
from crmsync.queue import keys
from crmsync.redis_client import RedisClient
from crmsync_lab.bench.report import ProcUsage, deltas

SAMPLE_SECONDS = 0.5
SERVICE_NAMES = {"postgresql": ("postgres",), "redis": ("redis-server",)}


def _tree(pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []


def _by_name(names: Sequence[str], database: str | None) -> list[psutil.Process]:
    """Processes called ``names``; of PostgreSQL only the auxiliary processes and the
    backends of ``database`` (other databases on a shared server are not ours)."""
    out = []
    for p in psutil.process_iter(["name", "cmdline"]):
        if (p.info.get("name") or "") not in names:
            continue
        title = " ".join(p.info.get("cmdline") or [])
        # A backend's title: "postgres: 15/main: user dbname 127.0.0.1(51234) idle".
        if database is not None and "(" in title and f" {database} " not in title:
            continue
        out.append(p)
    return out


def _cpu(procs: Sequence[psutil.Process]) -> dict[int, float]:
    out: dict[int, float] = {}
    for p in procs:
        with contextlib.suppress(psutil.Error):
            t = p.cpu_times()
            out[p.pid] = t.user + t.system
    return out


@dataclass
class _Watched:
    name: str
    root: int | None  # a child of ours (with its own children), or None: found by name
    names: tuple[str, ...] = ()
    database: str | None = None
    peak_rss: float = 0.0
    pids: set[int] = field(default_factory=set)
    mark: dict[int, float] = field(default_factory=dict)
    cpu: float = 0.0

    def procs(self) -> list[psutil.Process]:
        procs = _tree(self.root) if self.root is not None else _by_name(self.names, self.database)
        self.pids.update(p.pid for p in procs)
        return procs


class ProcWatch:
    """Peak RSS of each watched process over the run, CPU within ``start()``..``stop()``."""

    def __init__(self, database: str | None = None, include_services: bool = True) -> None:
        self.watched: dict[str, _Watched] = {}
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()
        if include_services:
            for name, names in SERVICE_NAMES.items():
                db = database if name == "postgresql" else None
                self.watched[name] = _Watched(name, None, names, db)

    def add(self, name: str, pid: int | None) -> None:
        if pid is not None:
            self.watched[name] = _Watched(name, pid)

    def add_many(self, pids: Mapping[str, int | None]) -> None:
        for name, pid in pids.items():
            self.add(name, pid)

    async def __aenter__(self) -> ProcWatch:
        self._stop = asyncio.Event()
        self._task = asyncio.create_task(self._sample_forever())
        return self

    async def __aexit__(self, *_: object) -> None:
        self._stop.set()
        if self._task is not None:
            await self._task

    async def _sample_forever(self) -> None:
        while not self._stop.is_set():
            await asyncio.to_thread(self.sample)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), SAMPLE_SECONDS)

    def sample(self) -> None:
        for w in self.watched.values():
            if w.root is None:
                continue  # services: CPU only (their memory is shared buffers, not ours)
            rss = 0.0
            for p in w.procs():
                with contextlib.suppress(psutil.Error):
                    rss = max(rss, p.memory_info().rss)  # per process: the largest one
            w.peak_rss = max(w.peak_rss, rss)

    def start(self) -> None:
        """Begin the CPU window."""
        for w in self.watched.values():
            w.mark = _cpu(w.procs())

    def stop(self) -> None:
        """End the CPU window: CPU seconds of processes alive at both edges."""
        for w in self.watched.values():
            now = _cpu(w.procs())
            w.cpu = sum(now[pid] - t0 for pid, t0 in w.mark.items() if pid in now)

    def usage(self) -> list[ProcUsage]:
        return [
            ProcUsage(
                w.name,
                sorted(w.pids),
                round(w.cpu, 3),
                None if w.root is None else round(w.peak_rss / 2**20, 1),
            )
            for w in self.watched.values()
        ]

    def cpu_of(self, prefix: str) -> float:
        return sum(w.cpu for name, w in self.watched.items() if name.startswith(prefix))


class RateWatch:
    """Per-connection cumulative worker counters, sampled once a second."""

    def __init__(self, redis: RedisClient, connection_ids: Sequence[str], field_name: str) -> None:
        self.redis = redis
        self.ids = list(connection_ids)
        self.field = field_name
        self.times: list[float] = []
        self.values: list[list[int]] = []  # one row per sample, one column per connection
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()

    async def read(self) -> list[int]:
        pipe = self.redis.pipeline(transaction=False)
        for cid in self.ids:
            pipe.hget(keys.connection(cid).stats, self.field)
        return [int(v or 0) for v in await pipe.execute()]

    async def _loop(self) -> None:
        next_at = time.monotonic()
        while not self._stop.is_set():
            self.times.append(time.monotonic())
            self.values.append(await self.read())
            next_at += 1.0
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), max(0.0, next_at - time.monotonic()))

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        # An event, not task.cancel(): a cancel landing inside a redis-py pipeline
        # call can be swallowed, and the loop then never ends.
        self._stop.set()
        if self._task is not None:
            await self._task

    def series(self) -> dict[str, list[float]]:
        """Per connection: the counter's increase in each second."""
        out: dict[str, list[float]] = {}
        for i, cid in enumerate(self.ids):
            out[cid] = deltas([float(row[i]) for row in self.values])
        return out


async def counter_totals(
    redis: RedisClient, connection_ids: Sequence[str]
) -> dict[str, dict[str, int]]:
    """The workers' counters (requests, created, updated, ...) of each connection."""
    return {cid: await counters.read(redis, cid) for cid in connection_ids}


def machine_info() -> dict[str, object]:
    """nproc, CPU model and RAM of this machine, for the report."""
    model = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "nproc": len(psutil.Process().cpu_affinity() or []) or psutil.cpu_count(),
        "cpu_model": model,
        "ram_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "load_avg_1m": round(psutil.getloadavg()[0], 2),
    }
