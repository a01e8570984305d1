"""Every read of a contact by id names its tenant: with the same ids in two tenants,
each in a different state, the worker's load, reconcile, dead-letter replay and the
status report each see the connection's own tenant only."""

from __future__ import annotations

from typing import Any, cast

import asyncpg
import pytest
import redis.asyncio as aioredis

from crmsync import db, dlq
from crmsync.capture.reconcile import reconcile
from crmsync.queue import keys
from crmsync.queue.store import BAND_SCALE, Band, QueueStore
from crmsync.report import status_report

# The same four ids in each tenant; what each tenant's row and ledger say differs.
#   id: (acme's state, beta's state)
STATES = {
    "live-here": ("live", "deleted"),  # acme: update due; beta: delete due
    "gone-here": ("absent", "live"),  # acme: hard-deleted (orphan); beta: create due
    "fresh": ("live", "absent"),  # acme: never synced (create); beta: nothing
    "dead": ("deleted", "live"),
}
TENANTS = ("acme", "beta")


@pytest.fixture
async def pool(pool: asyncpg.Pool[Any]) -> asyncpg.Pool[Any]:
    """The test's pool, with a connection per tenant and contacts in every state."""
    p = pool
    for i, t in enumerate(TENANTS):
        await p.execute(
            "INSERT INTO connections (id, tenant, crm, account, base_url)"
            " VALUES ($1, $2, 'salesforce', $2, 'http://127.0.0.1:1')",
            f"{t}-sf",
            t,
        )
        for cid, states in STATES.items():
            state = states[i]
            if state == "absent":
                continue
            await p.execute(
                "INSERT INTO contacts (tenant, id, email) VALUES ($1, $2, $3)",
                t,
                cid,
                f"{cid}@{t}.example",
            )
            if state == "deleted":
                await p.execute(
                    "UPDATE contacts SET deleted_at = now() WHERE tenant = $1 AND id = $2",
                    t,
                    cid,
                )
    # Ledgers: every id but "fresh" was synced to both connections at version 1.
    for t in TENANTS:
        await p.executemany(
            "INSERT INTO sync_state (connection_id, contact_id, external_id, synced_version,"
            " status) VALUES ($1, $2, $3, 1, 'synced')",
            [(f"{t}-sf", cid, f"003{t}{cid}") for cid in STATES if cid != "fresh"],
        )
    # acme's live-here changed after its sync (version 2): an update is due.
    await p.execute(
        "UPDATE contacts SET first_name = 'New' WHERE tenant = 'acme' AND id = 'live-here'"
    )
    await p.execute("DELETE FROM outbox")
    return p


async def _queued(r: aioredis.Redis, cid: str) -> dict[str, int]:
    entries = cast(
        "list[tuple[bytes, float]]",
        await r.zrange(keys.connection(cid).ready, 0, -1, withscores=True),
    )
    return {k.decode(): int(score) // BAND_SCALE for k, score in entries}


async def test_worker_load_reads_the_connections_tenant(pool: asyncpg.Pool[Any]) -> None:
    ids = list(STATES)
    for i, t in enumerate(TENANTS):
        rows = {r["id"]: r for r in await pool.fetch(db.q("worker_load"), f"{t}-sf", ids)}
        for cid, states in STATES.items():
            row = rows[cid]
            if states[i] == "absent":
                assert row["version"] is None, (t, cid)
            else:
                assert (row["tenant"], row["email"]) == (t, f"{cid}@{t}.example")
                assert row["deleted"] == (states[i] == "deleted")


async def test_reconcile_queues_each_tenants_own_state(
    pool: asyncpg.Pool[Any], redis_client: aioredis.Redis
) -> None:
    await reconcile(pool, QueueStore(redis_client))
    assert await _queued(redis_client, "acme-sf") == {
        "live-here": Band.UPDATE,
        "gone-here": Band.DELETE,  # orphan: beta's live row of that id does not count
        "fresh": Band.CREATE,
        "dead": Band.DELETE,
    }
    assert await _queued(redis_client, "beta-sf") == {
        "live-here": Band.DELETE,
    }


async def test_replay_bands_come_from_the_connections_tenant(
    pool: asyncpg.Pool[Any], redis_client: aioredis.Redis
) -> None:
    for t in TENANTS:
        await pool.executemany(
            "INSERT INTO dead_letters (connection_id, contact_id, operation, error)"
            " VALUES ($1, $2, 'update', 'x')",
            [(f"{t}-sf", cid) for cid in STATES],
        )
    store = QueueStore(redis_client)
    assert await dlq.replay(pool, store, dlq.DeadFilter(tenant="beta"), all_=True) == 4
    assert await _queued(redis_client, "beta-sf") == {
        "live-here": Band.DELETE,
        "gone-here": Band.UPDATE,
        "fresh": Band.DELETE,  # beta has no such contact
        "dead": Band.UPDATE,
    }
    assert await _queued(redis_client, "acme-sf") == {}
    assert await pool.fetchval("SELECT count(*) FROM dead_letters") == 4  # acme's stay


async def test_status_counts_each_tenant_apart(pool: asyncpg.Pool[Any]) -> None:
    everyone = await status_report(pool)
    assert everyone["tenants"] == {
        "acme": {"contacts": 2, "deleted_contacts": 1, "outbox": 0, "dead_letters": 0},
        "beta": {"contacts": 2, "deleted_contacts": 1, "outbox": 0, "dead_letters": 0},
    }
    assert everyone["totals"]["contacts"] == 4
    beta = await status_report(pool, "beta")
    assert [c["id"] for c in beta["connections"]] == ["beta-sf"]
    assert beta["totals"] == everyone["tenants"]["beta"]
