"""The worker end to end in one process: real PostgreSQL, real Redis, the mock
CRMs over real HTTP. Relay and worker run as tasks; contacts are written by SQL."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
import orjson
import pytest
import redis.asyncio as aioredis

from crmsync import db
from crmsync.capture.relay import relay_once
from crmsync.clock import RedisClock
from crmsync.connections import Connection
from crmsync.processes import run_worker
from crmsync.queue.store import QueueStore
from crmsync.report import collect, prometheus_text
from crmsync.settings import Settings
from crmsync_lab.mock.config import AccountSpec
from crmsync_lab.mock.limits import Window
from crmsync_lab.mock.server import MockHandle
from support import StartMock, add_connections, to_mock


@dataclass
class System:
    settings: Settings
    pool: asyncpg.Pool[Any]
    redis: aioredis.Redis
    store: QueueStore
    mock: MockHandle
    stop: asyncio.Event

    async def relay(self) -> None:
        while await relay_once(self.pool, self.store, 1000):
            pass

    async def wait_for(self, check: Callable[[], Any], limit: float = 20.0) -> None:
        deadline = asyncio.get_running_loop().time() + limit
        while True:
            await self.relay()
            if await check():
                return
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError("condition not reached in time")
            await asyncio.sleep(0.1)

    async def ledger(self, connection: str) -> dict[str, asyncpg.Record]:
        rows = await self.pool.fetch(
            "SELECT * FROM sync_state WHERE connection_id = $1", connection
        )
        return {r["contact_id"]: r for r in rows}

    def records(self, crm: str, account: str) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for rec in self.mock.records(crm, account):
            key = rec.get("CrmSync_Id__c") or rec.get("properties", {}).get("crmsync_id")
            out[str(key)] = rec
        return out


@contextlib.asynccontextmanager
async def _running(
    s: Settings,
    mock: MockHandle,
    specs: Sequence[Connection],
    clock: RedisClock | None = None,
) -> AsyncIterator[System]:
    """A worker (concurrency 50) on a fresh pool and Redis client, after the
    connections ``specs`` were added; stopped and closed afterwards."""
    pool = await db.create_pool(s.database_url)
    redis = aioredis.from_url(s.redis_url)
    store = QueueStore(redis, margin=s.limit_margin)
    await add_connections(pool, specs)
    stop = asyncio.Event()
    task = asyncio.create_task(run_worker(s, 50, stop, clock=clock))
    try:
        yield System(s, pool, redis, store, mock, stop)
    finally:
        stop.set()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, 15)
        await redis.aclose()
        await pool.close()


@contextlib.asynccontextmanager
async def _one_salesforce(
    s: Settings,
    start_mock_crm: StartMock,
    account: str,
    *,
    latency_ms: float,
    limit: int,
    conn_settings: dict[str, Any],
    clock: RedisClock | None = None,
) -> AsyncIterator[System]:
    """One Salesforce account at ``limit``/s, its connection (id = the account) and
    a worker."""
    mock = await start_mock_crm(
        AccountSpec("salesforce", account, limits=(Window(limit, 1000),)), latency_ms=latency_ms
    )
    spec = to_mock(mock, account, "salesforce", account, per_second=limit, settings=conn_settings)
    async with _running(s, mock, [spec], clock) as system:
        yield system


async def _sync_new(system: System, account: str, n: int) -> dict[str, Any]:
    """Insert ``n`` active contacts, wait until the account holds them all; the
    connection's status report."""
    rows = [(f"{account}-{i}", f"{account}{i}@example.com", None, "active") for i in range(n)]
    await _insert(system.pool, rows)

    async def all_synced() -> bool:
        return len(system.records("salesforce", account)) == n

    await system.wait_for(all_synced)
    report = await collect(system.pool, system.redis)
    (conn,) = [c for c in report["connections"] if c["id"] == account]
    return conn  # type: ignore[no-any-return]


@pytest.fixture(params=[1, 50], ids=["single", "batch"])
async def system(
    request: pytest.FixtureRequest, settings: Settings, start_mock_crm: StartMock
) -> AsyncIterator[System]:
    s = settings.model_copy(
        update={
            "retry_base_seconds": 0.05,
            "retry_cap_seconds": 0.2,
            # Enough that 30% transient errors never exhaust a record by chance: a
            # retried HubSpot create is two requests (a lookup by crmsync_id first),
            # failing 51% of the time (0.51 ** 20: 1 in a million); permanent
            # errors are not retried at all.
            "retry_attempts": 20,
            "breaker_recovery_seconds": 0.5,
            "worker_concurrency": 50,
            "lease_seconds": 5.0,
        }
    )
    mock = await start_mock_crm(
        AccountSpec("salesforce", "acme", limits=(Window(200, 1000),)),
        AccountSpec("hubspot", "acme", limits=(Window(200, 1000),)),
        latency_ms=1,
        jitter_ms=1,
    )
    specs = [
        to_mock(mock, cid, crm, "acme", per_second=200, settings={"batch_size": request.param})
        for cid, crm in (("sf", "salesforce"), ("hs", "hubspot"))
    ]
    async with _running(s, mock, specs) as system:
        yield system


async def _insert(
    pool: asyncpg.Pool[Any], rows: Sequence[tuple[str, str, str | None, str]]
) -> None:
    await pool.executemany(
        "INSERT INTO contacts (id, email, first_name, last_name, company, status)"
        " VALUES ($1, $2, 'Ada', 'Lovelace', $3, $4)",
        rows,
    )


async def test_create_update_delete_reach_both_crms(system: System) -> None:
    rows = [(f"c{i}", f"c{i}@example.com", f"Co{i}", "active") for i in range(40)]
    await _insert(system.pool, rows)

    async def all_created() -> bool:
        return (
            len(system.records("salesforce", "acme")) == 40
            and len(system.records("hubspot", "acme")) == 40
        )

    await system.wait_for(all_created)
    await system.pool.execute("UPDATE contacts SET first_name = 'Grace' WHERE id = 'c1'")
    await system.pool.execute("UPDATE contacts SET deleted_at = now() WHERE id = 'c2'")
    await system.pool.execute("DELETE FROM contacts WHERE id = 'c3'")

    async def converged() -> bool:
        sf, hs = system.records("salesforce", "acme"), system.records("hubspot", "acme")
        # The CRM shows a write before the worker records it: wait for both.
        ledger = await system.ledger("sf")
        return (
            sf.get("c1", {}).get("FirstName") == "Grace"
            and hs.get("c1", {}).get("properties", {}).get("firstname") == "Grace"
            and "c2" not in sf
            and "c3" not in sf
            and "c2" not in hs
            and "c3" not in hs
            and "c1" in ledger
            and ledger["c1"]["synced_version"] == 2
            and "c2" in ledger
            and ledger["c2"]["status"] == "deleted"
        )

    await system.wait_for(converged)
    stats = system.mock.stats()["accounts"]
    for acct in ("salesforce/acme", "hubspot/acme"):
        assert stats[acct]["duplicates"] == 0
        assert stats[acct]["violations"] == 0
    ledger = await system.ledger("sf")
    assert ledger["c1"]["synced_version"] == 2
    assert ledger["c2"]["status"] == "deleted"
    # What operators scrape: the workers' counters and the ledger, per connection.
    text = prometheus_text(await collect(system.pool, system.redis)).decode()
    # (labels in the order the client prints them: by name)
    sf, hs = 'connection="sf",crm="salesforce"', 'connection="hs",crm="hubspot"'
    assert f'crmsync_connection_created_total{{{sf},tenant="default"}} 40.0' in text
    assert f'crmsync_ledger_rows{{{hs},status="deleted",tenant="default"}} 2.0' in text
    assert f'crmsync_queue_depth{{{sf},queue="ready",tenant="default"}} 0.0' in text
    assert 'crmsync_outbox_pending{tenant="default"} 0.0' in text


async def test_rules_skip_and_later_create(system: System) -> None:
    await _insert(
        system.pool,
        [("a", "a@example.com", None, "active"), ("b", "b@example.com", "Acme", "active")],
    )

    async def first() -> bool:
        hs = await system.ledger("hs")
        sf = await system.ledger("sf")
        return "a" in hs and hs["a"]["status"] == "skipped" and len(sf) == 2 and "b" in hs

    await system.wait_for(first)
    hs_ledger = await system.ledger("hs")
    assert hs_ledger["a"]["rule"] == "hubspot.create.has_company"
    assert "a" not in system.records("hubspot", "acme")
    # Inactive: Salesforce skips the update; HubSpot updates always.
    await system.pool.execute(
        "UPDATE contacts SET status = 'inactive', last_name = 'X' WHERE id = 'b'"
    )
    # A company arrives: HubSpot now creates it.
    await system.pool.execute("UPDATE contacts SET company = 'Initech' WHERE id = 'a'")

    async def second() -> bool:
        sf = await system.ledger("sf")
        hs = system.records("hubspot", "acme")
        return (
            sf["b"]["status"] == "skipped"
            and "a" in hs
            and hs["b"]["properties"].get("lastname") == "X"
        )

    await system.wait_for(second)
    sf_ledger = await system.ledger("sf")
    assert sf_ledger["b"]["rule"] == "salesforce.update.active_only"
    assert system.records("salesforce", "acme")["b"]["LastName"] == "Lovelace"


async def test_bad_record_dead_lettered_with_crm_message_rest_synced(system: System) -> None:
    await _insert(system.pool, [(f"g{i}", f"g{i}@example.com", "Co", "active") for i in range(5)])
    await system.pool.execute(
        "INSERT INTO contacts (id, email, first_name, last_name, company) "
        "VALUES ('bad', 'bad-at-example.com', 'No', 'Mail', 'Co')"
    )  # plain SQL skips the API's email check; Salesforce refuses it

    async def settled() -> bool:
        n = await system.pool.fetchval(
            "SELECT count(*) FROM dead_letters WHERE connection_id = 'sf'"
        )
        return bool(n == 1 and len(system.records("salesforce", "acme")) == 5)

    await system.wait_for(settled)
    dl = await system.pool.fetchrow("SELECT * FROM dead_letters WHERE connection_id = 'sf'")
    assert dl is not None
    assert dl["contact_id"] == "bad"
    assert dl["error_code"] == "INVALID_EMAIL_ADDRESS"
    assert "bad-at-example.com" in dl["error"]
    payload = dl["payload"] if isinstance(dl["payload"], dict) else orjson.loads(dl["payload"])
    assert payload["email"] == "bad-at-example.com"
    assert (await system.ledger("sf"))["bad"]["status"] == "dead"


async def test_transient_errors_are_retried(system: System) -> None:
    def errors(acct: str) -> int:
        by_status = system.mock.stats()["accounts"][acct]["by_status"]
        return int(by_status.get("500", 0)) + int(by_status.get("503", 0))

    accounts = ("salesforce/acme", "hubspot/acme")
    # Every connection first meets errors for sure, then 30% of its requests fail.
    system.mock.set_faults("*", error_rate=1.0)
    await _insert(system.pool, [(f"t{i}", f"t{i}@example.com", "Co", "active") for i in range(30)])

    async def failed_once() -> bool:
        return all(errors(a) > 0 for a in accounts)

    await system.wait_for(failed_once, limit=10)
    system.mock.set_faults("*", error_rate=0.3)

    async def done() -> bool:
        sf = len(system.records("salesforce", "acme"))
        hs = len(system.records("hubspot", "acme"))
        return sf == 30 and hs == 30

    await system.wait_for(done, limit=30)
    assert await system.pool.fetchval("SELECT count(*) FROM dead_letters") == 0
    for acct in accounts:
        assert system.mock.stats()["accounts"][acct]["duplicates"] == 0


async def test_revoked_token_pauses_connection_and_keeps_queue(system: System) -> None:
    system.mock.set_faults("acme", crm="salesforce", revoke_token=True)
    await _insert(system.pool, [(f"r{i}", f"r{i}@example.com", "Co", "active") for i in range(10)])

    async def paused() -> bool:
        reason = await system.pool.fetchval("SELECT paused_reason FROM connections WHERE id='sf'")
        return reason is not None

    await system.wait_for(paused)
    reason = await system.pool.fetchval("SELECT paused_reason FROM connections WHERE id='sf'")
    assert "401" in reason

    async def kept() -> bool:
        # Every id back in the queue: no request of the paused connection in flight.
        depth = await system.store.depth("sf")
        return depth.leased == 0 and depth.ready == 10

    await system.wait_for(kept)
    system.mock.set_faults("acme", crm="salesforce", revoke_token=False)
    await system.pool.execute("UPDATE connections SET paused_reason = NULL WHERE id = 'sf'")
    await system.pool.execute("SELECT pg_notify('crmsync_connections', 'sf')")

    async def all_synced() -> bool:
        return len(system.records("salesforce", "acme")) == 10

    await system.wait_for(all_synced)
    assert await system.pool.fetchval("SELECT count(*) FROM dead_letters") == 0


async def test_a_connection_keeps_to_its_in_flight_limit(
    settings: Settings, start_mock_crm: StartMock
) -> None:
    """``max_in_flight`` caps the requests waiting on one CRM at once: ten 1-record
    sends at 150 ms each, two at a time, take five rounds; the rest waited."""
    async with _one_salesforce(
        settings,
        start_mock_crm,
        "slow",
        latency_ms=150,
        limit=1000,
        conn_settings={"max_in_flight": 2},
    ) as system:
        t0 = asyncio.get_running_loop().time()
        conn = await _sync_new(system, "slow", 10)
        took = asyncio.get_running_loop().time() - t0
        assert took >= 5 * 0.15 - 0.05  # five rounds of two; all ten at once: ~0.15 s
        assert conn["counters"]["held_in_flight"] >= 8 - 2  # the first two never wait
        assert conn["sync"].get("synced") == 10


async def test_a_worker_whose_clock_is_off_keeps_to_redis_time(
    settings: Settings, start_mock_crm: StartMock
) -> None:
    """A worker host 500 ms ahead of Redis learns the offset from its first claim.
    Without it every claim would look half a second late: a re-admission per claim
    and a restamp per write. (A write may still be late for real on a busy machine,
    e.g. the first burst opening its connections: so not "none", but not all.)"""
    import time

    clock = RedisClock(lambda: time.time() + 0.5)
    async with _one_salesforce(
        settings, start_mock_crm, "skew", latency_ms=1, limit=100, conn_settings={}, clock=clock
    ) as system:
        counters = (await _sync_new(system, "skew", 60))["counters"]
        assert abs(clock.offset_ms + 500) < 50, clock.offset_ms
        assert counters.get("readmitted", 0) < 60, counters  # counted per request
        assert counters.get("restamped", 0) < 60, counters
        assert system.mock.account_stats("salesforce", "skew")["violations"] == 0
