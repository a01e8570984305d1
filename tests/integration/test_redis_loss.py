"""Redis loses everything mid-backlog, and crmsync heals by itself within the limits.

A private ``redis-server`` (its own port, no persistence: never the shared one),
a worker and the relay in this process, the lab's mock CRMs counting every
sliding window. Mid-backlog at full rate Redis is flushed (FLUSHALL), or
restarted without persistence; nobody runs a command. At the end every contact
is in its CRM with its latest data, no request went over any limit, no record
exists twice, and each connection healed once.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import shutil
import socket
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis

from crmsync import db
from crmsync.capture.relay import LossWatch, relay_once
from crmsync.processes import run_worker
from crmsync.queue.store import QueueStore
from crmsync.ratelimit import RateWindow
from crmsync.report import collect, prometheus_text
from crmsync.settings import Settings
from crmsync_lab.mock.config import AccountSpec
from crmsync_lab.mock.limits import Window
from crmsync_lab.mock.server import MockHandle
from support import StartMock, add_connections, to_mock

pytestmark = pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server")

N = 240  # contacts per tenant: about 8 s of backlog at these limits


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PrivateRedis:
    """A redis-server of this test alone, without persistence."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.port = _free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.home),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None

    async def ready(self) -> None:
        client = aioredis.from_url(self.url)
        try:
            async with asyncio.timeout(10):
                while True:
                    with contextlib.suppress(Exception):
                        if await client.ping():
                            return
                    await asyncio.sleep(0.05)
        finally:
            await client.aclose()


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    server = PrivateRedis(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@dataclasses.dataclass
class Run:
    pool: asyncpg.Pool[Any]
    redis: aioredis.Redis
    mock: MockHandle

    async def insert(self, tenant: str, n: int, tag: str) -> None:
        await self.pool.executemany(
            "INSERT INTO contacts (tenant, id, email, first_name, last_name, company, status)"
            " VALUES ($1, $2, $3, $4, 'L', 'Co', 'active')"
            " ON CONFLICT (tenant, id) DO UPDATE SET first_name = EXCLUDED.first_name",
            [(tenant, f"{tenant}-{i}", f"{tenant}{i}@example.com", tag) for i in range(n)],
        )

    def names(self, crm: str, account: str) -> dict[str, str]:
        out: dict[str, str] = {}
        for rec in self.mock.records(crm, account):
            props = rec.get("properties", {})
            key = rec.get("CrmSync_Id__c") or props.get("crmsync_id")
            out[str(key)] = str(rec.get("FirstName") or props.get("firstname"))
        return out


@contextlib.asynccontextmanager
async def _system(
    settings: Settings, start_mock_crm: StartMock, redis_url: str
) -> AsyncIterator[Run]:
    """A HubSpot account at 20/s and 150/10 s, a Salesforce one at 25/s and
    400/min, one tenant each; a worker and a relay on ``redis_url``."""
    s = settings.model_copy(update={"redis_url": redis_url})
    hs_windows = (Window(20, 1000), Window(150, 10_000))
    sf_windows = (Window(25, 1000), Window(400, 60_000))
    mock = await start_mock_crm(
        AccountSpec("hubspot", "hs", limits=hs_windows),
        AccountSpec("salesforce", "sf", limits=sf_windows),
        latency_ms=5,
    )
    conns = [
        dataclasses.replace(
            to_mock(mock, "hs", "hubspot", "hs"),
            tenant="th",
            windows=tuple(RateWindow(w.limit, w.window_ms) for w in hs_windows),
        ),
        dataclasses.replace(
            to_mock(mock, "sf", "salesforce", "sf"),
            tenant="ts",
            windows=tuple(RateWindow(w.limit, w.window_ms) for w in sf_windows),
        ),
    ]
    pool = await db.create_pool(s.database_url)
    redis = aioredis.from_url(redis_url)
    await add_connections(pool, conns)
    stop = asyncio.Event()
    worker = asyncio.create_task(run_worker(s, 50, stop))
    relay = asyncio.create_task(_relay(pool, redis_url, stop))
    try:
        yield Run(pool, redis, mock)
    finally:
        stop.set()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(worker, 20)
        relay.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await relay
        await redis.aclose()
        await pool.close()


async def _relay(pool: asyncpg.Pool[Any], redis_url: str, stop: asyncio.Event) -> None:
    """The relay's loop (polling), riding out a Redis that is down for a while."""
    redis = aioredis.from_url(redis_url)
    store = QueueStore(redis)
    losses = LossWatch()
    try:
        while not stop.is_set():
            with contextlib.suppress(Exception):
                while await relay_once(pool, store, 500, losses=losses):
                    pass
            await asyncio.sleep(0.05)
    finally:
        await redis.aclose()


async def _until(check: Any, seconds: float, what: str) -> None:
    deadline = asyncio.get_running_loop().time() + seconds
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"not reached in {seconds} s: {what}")
        await asyncio.sleep(0.1)


async def _lose_mid_backlog(run: Run, lose: Any) -> None:
    await run.insert("th", N, "v1")
    await run.insert("ts", N, "v1")

    async def a_third() -> bool:
        return (
            len(run.names("hubspot", "hs")) >= N // 3
            and len(run.names("salesforce", "sf")) >= N // 3
        )

    await _until(a_third, 30, "a third of the backlog synced")
    # Updates queued just before the loss: their queue entries are lost with it.
    await run.insert("th", N, "v2")
    await run.insert("ts", N, "v2")
    await asyncio.sleep(0.3)  # the relay moves them to Redis (and deletes the outbox rows)
    await lose()

    async def all_synced() -> bool:
        return all(
            len(names) == N and set(names.values()) == {"v2"}
            for names in (run.names("hubspot", "hs"), run.names("salesforce", "sf"))
        )

    await _until(all_synced, 90, "every contact's latest data in its CRM")
    for crm, account in (("hubspot", "hs"), ("salesforce", "sf")):
        stats = run.mock.account_stats(crm, account)
        assert stats["violations"] == 0, (crm, stats["violations_by"], stats["violations_at"])
        assert stats["duplicates"] == 0, (crm, stats["duplicates_by"])
    heals = {
        r["connection_id"]: r["heals"] for r in await run.pool.fetch("SELECT * FROM redis_state")
    }
    assert heals == {"hs": 1, "sf": 1}
    report = await collect(run.pool, run.redis)
    assert {c["id"]: c["redis_heals"] for c in report["connections"]} == heals
    text = prometheus_text(report).decode()
    assert 'crmsync_redis_heals_total{connection="hs",crm="hubspot",tenant="th"} 1.0' in text


@pytest.mark.slow
async def test_flushall_mid_backlog_heals_within_the_limits(
    settings: Settings, start_mock_crm: StartMock, private_redis: PrivateRedis
) -> None:
    async with _system(settings, start_mock_crm, private_redis.url) as run:

        async def flush() -> None:
            await run.redis.flushall()

        await _lose_mid_backlog(run, flush)


@pytest.mark.slow
async def test_restart_without_persistence_mid_backlog_heals_within_the_limits(
    settings: Settings, start_mock_crm: StartMock, private_redis: PrivateRedis
) -> None:
    async with _system(settings, start_mock_crm, private_redis.url) as run:

        async def restart() -> None:
            private_redis.stop()
            await asyncio.sleep(0.5)
            private_redis.start()
            await private_redis.ready()

        await _lose_mid_backlog(run, restart)
