"""Process wiring: worker processes, and `crmsync up` (API + relay + workers)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import multiprocessing as mp
import os
import signal
from multiprocessing.context import SpawnProcess
from typing import Any

import aiohttp
import asyncpg
import structlog

from crmsync import db
from crmsync.breaker import CrmBreaker
from crmsync.clock import Clock, RedisClock
from crmsync.crm.http import http_session
from crmsync.queue.store import QueueStore
from crmsync.redis_client import RedisClient, redis_of
from crmsync.settings import Settings
from crmsync.worker import Worker
from crmsync.worker.claim import Claims
from crmsync.worker.crm_gate import CrmGate
from crmsync.worker.heal import Healer
from crmsync.worker.inflight import InFlight
from crmsync.worker.ledger import PgLedger
from crmsync.worker.loop import RedisWakes
from crmsync.worker.permits import Permits
from crmsync.worker.registry import Registry
from crmsync.worker.slots import Slots

log = structlog.get_logger(__name__)


def install_stop(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)


def build_worker(
    settings: Settings,
    *,
    pool: asyncpg.Pool[Any],
    redis: RedisClient,
    session: aiohttp.ClientSession,
    concurrency: int,
    clock: Clock,
) -> Worker:
    """A worker and its collaborators on PostgreSQL, Redis and the HTTP session."""
    store = QueueStore(redis, margin=settings.limit_margin)
    slots = Slots(concurrency)
    breaker = CrmBreaker(
        redis,
        threshold=settings.breaker_threshold,
        recovery_ms=int(settings.breaker_recovery_seconds * 1000),
        # The probe's request may take the whole HTTP timeout before it reports.
        probe_ms=int(settings.http_timeout_seconds * 1000) + 2000,
    )
    healer = Healer(pool, store, margin=settings.limit_margin)
    permits = Permits(
        store,
        clock,
        margin=settings.limit_margin,
        http_timeout_seconds=settings.http_timeout_seconds,
        lineage=healer.lineage,
    )
    claims = Claims(
        settings,
        clock=clock,
        store=store,
        ledger=PgLedger(pool),
        crm_gate=CrmGate(breaker, clock),
        permits=permits,
        inflight=InFlight(concurrency),
        slots=slots,
        healer=healer,
    )
    return Worker(
        clock=clock,
        slots=slots,
        registry=Registry(pool, store, session, settings),
        claims=claims,
        wakes=RedisWakes(store.wakeups),
        shutdown_grace_seconds=settings.shutdown_grace_seconds,
        healer=healer,
    )


async def run_worker(
    settings: Settings,
    concurrency: int,
    stop: asyncio.Event,
    *,
    own_process: bool = False,
    clock: Clock | None = None,
) -> None:
    """One worker's event loop until ``stop`` is set. ``own_process``: the process
    is the worker's alone (not a test's), so what exists at start may be frozen.
    ``clock``: Redis time as learnt from the claims, unless a test brings its own."""
    pool = await db.create_pool(settings.database_url, min_size=2, max_size=8, light_reset=True)
    redis = await redis_of(settings)
    session = http_session(concurrency, settings.http_timeout_seconds)
    try:
        worker = build_worker(
            settings,
            pool=pool,
            redis=redis,
            session=session,
            concurrency=concurrency,
            clock=clock or RedisClock(),
        )
        if own_process:
            # Everything alive now (modules, classes, pools) lives as long as the
            # process: out of the collector's sight, a full collection scans only
            # what came since and stalls the event loop far less.
            gc.freeze()
        log.info("worker.started", concurrency=concurrency)
        await worker.run(stop)
        log.info("worker.stopped")
    finally:
        await session.close()
        await redis.aclose()
        await pool.close()


def _child(settings_json: bytes, concurrency: int) -> None:
    from crmsync.logs import configure_logging

    settings = Settings.model_validate_json(settings_json)
    configure_logging(settings.log_level, settings.log_json)

    async def main() -> None:
        stop = asyncio.Event()
        install_stop(stop)
        await run_worker(settings, concurrency, stop, own_process=True)

    try:
        import uvloop

        uvloop.run(main())
    except ImportError:  # pragma: no cover
        asyncio.run(main())


def spawn_workers(settings: Settings, processes: int, concurrency: int) -> list[SpawnProcess]:
    ctx = mp.get_context("spawn")
    payload = settings.model_dump_json().encode()
    children = [ctx.Process(target=_child, args=(payload, concurrency)) for _ in range(processes)]
    for c in children:
        c.start()
    return children


def stop_workers(children: list[SpawnProcess]) -> None:
    """SIGTERM: each child stops claiming, finishes or releases its work."""
    for c in children:
        if c.is_alive() and c.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(c.pid, signal.SIGTERM)


def run_worker_processes(settings: Settings, processes: int, concurrency: int) -> int:
    """Start ``processes`` worker processes and wait; SIGTERM/SIGINT stop them all."""
    children = spawn_workers(settings, processes, concurrency)

    def forward(signum: int, _frame: Any) -> None:
        stop_workers(children)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    code = 0
    for c in children:
        c.join()
        code = code or (c.exitcode or 0)
    return code
