"""Reconcile: after Redis lost everything, every unsynced contact is queued again, once."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import asyncpg
import pytest
import redis.asyncio as aioredis
from typer.testing import CliRunner

from crmsync.capture.reconcile import reconcile
from crmsync.cli import app
from crmsync.errors import UserError
from crmsync.queue import keys
from crmsync.queue.store import BAND_SCALE, Band, QueueStore
from crmsync.settings import Settings
from support import add_connections, connection


@pytest.fixture
async def pool(pool: asyncpg.Pool[Any]) -> asyncpg.Pool[Any]:
    """The test's pool: two connections of tenant default, one of t2."""
    specs = [
        connection("sf", "salesforce"),
        connection("hs", "hubspot"),
        connection("other", "hubspot", tenant="t2"),
    ]
    await add_connections(pool, specs)
    return pool


async def queued(r: aioredis.Redis, cid: str) -> dict[str, tuple[int, float]]:
    entries = cast(
        "list[tuple[bytes, float]]",
        await r.zrange(keys.connection(cid).ready, 0, -1, withscores=True),
    )
    return {k.decode(): (int(s) // BAND_SCALE, s) for k, s in entries}


def bands(q: dict[str, tuple[int, float]]) -> dict[str, int]:
    return {k: b for k, (b, _) in q.items()}


async def ledger(pool: asyncpg.Pool[Any], cid: str, contact: str, **cols: Any) -> None:
    await pool.execute(
        "INSERT INTO sync_state (connection_id, contact_id, external_id, synced_version, status)"
        " VALUES ($1, $2, $3, $4, $5)",
        cid,
        contact,
        cols.get("external_id"),
        cols.get("synced_version"),
        cols["status"],
    )


async def scenario(pool: asyncpg.Pool[Any]) -> None:
    """One contact per ledger situation, seen from connection "sf"."""
    rows = [(f"c{i}", "default") for i in range(1, 13)] + [("t2a", "t2")]
    await pool.executemany(
        "INSERT INTO contacts (id, tenant, email) VALUES ($1, $2, $1 || '@x.io')", rows
    )
    await pool.execute("UPDATE contacts SET first_name = 'v2' WHERE id IN ('c2', 'c3', 'c7', 'c9')")
    await pool.execute(
        "UPDATE contacts SET deleted_at = now() WHERE id IN ('c4', 'c5', 'c11', 'c12')"
    )
    # c1: never synced -> CREATE
    await ledger(pool, "sf", "c2", external_id="X2", synced_version=1, status="synced")  # -> UPDATE
    await ledger(
        pool, "sf", "c3", external_id="X3", synced_version=2, status="synced"
    )  # up to date
    await ledger(pool, "sf", "c4", external_id="X4", synced_version=1, status="synced")  # -> DELETE
    # c5: deleted, never synced -> nothing
    await ledger(pool, "sf", "c6", external_id=None, synced_version=1, status="skipped")  # decided
    await ledger(
        pool, "sf", "c7", external_id="X7", synced_version=1, status="deleted"
    )  # revived -> CREATE
    await ledger(
        pool, "sf", "c8", external_id=None, synced_version=None, status="retrying"
    )  # CREATE
    await ledger(pool, "sf", "c9", external_id="X9", synced_version=1, status="dead")  # in the DLQ
    await ledger(pool, "sf", "c10", external_id="X10", synced_version=1, status="dead")
    # c10 changed after it died: a new version deserves a new try -> UPDATE
    await pool.execute(
        "UPDATE sync_state SET updated_at = now() - interval '1 hour' WHERE contact_id = 'c10'"
    )
    await pool.execute("UPDATE contacts SET first_name = 'v2' WHERE id = 'c10'")
    # c11: deleted after a 2xx that named no record: the CRM may hold it -> DELETE
    await ledger(pool, "sf", "c11", external_id=None, synced_version=1, status="synced")
    # c12: deleted after a create whose answer was lost -> DELETE
    await ledger(pool, "sf", "c12", external_id=None, synced_version=None, status="retrying")
    # gone: hard-deleted while the CRM has it -> DELETE
    await ledger(pool, "sf", "gone", external_id="XG", synced_version=3, status="synced")
    await ledger(pool, "sf", "gone2", external_id="XG2", synced_version=3, status="deleted")
    # gone3: hard-deleted after a sync that learnt no record id -> DELETE
    await ledger(pool, "sf", "gone3", external_id=None, synced_version=1, status="synced")


SF_EXPECTED = {
    "c1": Band.CREATE,
    "c2": Band.UPDATE,
    "c4": Band.DELETE,
    "c7": Band.CREATE,
    "c8": Band.CREATE,
    "c10": Band.UPDATE,
    "c11": Band.DELETE,
    "c12": Band.DELETE,
    "gone": Band.DELETE,
    "gone3": Band.DELETE,
}


async def test_reconcile_after_flushdb_restores_and_is_idempotent(
    pool: asyncpg.Pool[Any], redis_client: aioredis.Redis
) -> None:
    await scenario(pool)
    await redis_client.flushdb()
    store = QueueStore(redis_client)

    counts = await reconcile(pool, store)
    assert bands(await queued(redis_client, "sf")) == SF_EXPECTED
    # hs has no ledger at all: every live contact of the tenant
    hs_expected = {f"c{i}": Band.CREATE for i in (1, 2, 3, 6, 7, 8, 9, 10)}
    assert bands(await queued(redis_client, "hs")) == hs_expected
    assert bands(await queued(redis_client, "other")) == {"t2a": Band.CREATE}
    assert counts == {"hs": len(hs_expected), "other": 1, "sf": len(SF_EXPECTED)}

    before = {cid: await queued(redis_client, cid) for cid in counts}
    await reconcile(pool, store)  # twice: nothing new, nothing moved
    assert {cid: await queued(redis_client, cid) for cid in counts} == before


async def test_reconcile_pages_through_many_contacts(
    pool: asyncpg.Pool[Any], redis_client: aioredis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("crmsync.capture.reconcile.PAGE", 7)
    await pool.execute(
        "INSERT INTO contacts (id, tenant, email) "
        "SELECT 'p' || lpad(g::text, 3, '0'), 'default', 'e' FROM generate_series(1, 50) g"
    )
    await pool.execute(
        "INSERT INTO sync_state (connection_id, contact_id, external_id, synced_version, status) "
        "SELECT 'sf', 'o' || g, 'X', 1, 'synced' FROM generate_series(1, 15) g"
    )
    counts = await reconcile(pool, QueueStore(redis_client), connection_id="sf")
    assert counts == {"sf": 65}
    q = bands(await queued(redis_client, "sf"))
    assert len(q) == 65
    assert sum(1 for b in q.values() if b == Band.DELETE) == 15


async def test_reconcile_unknown_connection(
    pool: asyncpg.Pool[Any], redis_client: aioredis.Redis
) -> None:
    with pytest.raises(UserError, match="'nope'"):
        await reconcile(pool, QueueStore(redis_client), connection_id="nope")


async def test_reconcile_cli_prints_counts(
    pool: asyncpg.Pool[Any], settings: Settings, redis_client: aioredis.Redis
) -> None:
    await scenario(pool)
    env = {"CRMSYNC_DATABASE_URL": settings.database_url, "CRMSYNC_REDIS_URL": settings.redis_url}
    # The CLI runs its own event loop: give it a thread.
    res = await asyncio.to_thread(
        CliRunner().invoke, app, ["reconcile", "--connection", "sf"], env=env
    )
    assert res.exit_code == 0, res.output
    assert "sf" in res.output and str(len(SF_EXPECTED)) in res.output
    assert bands(await queued(redis_client, "sf")) == SF_EXPECTED
    assert await queued(redis_client, "hs") == {}
