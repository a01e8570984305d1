"""Versions never go back for a (tenant, id): whatever mix of inserts, updates,
soft and hard deletes and upserts reaches a contact, by any writer, every
change's outbox version is higher than the one before, so a ledger that synced
an earlier version always sees the new state as newer (``rules.decide``)."""

from __future__ import annotations

from typing import Any

import asyncpg
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crmsync.model import Contact, LedgerRow
from crmsync.rules import decide

WRITES = {
    "insert": "INSERT INTO contacts (tenant, id, email, first_name) VALUES ($1, $2, $3, $4)"
    " ON CONFLICT (tenant, id) DO NOTHING",
    "update": "UPDATE contacts SET first_name = $4, email = $3 WHERE tenant = $1 AND id = $2",
    "soft_delete": "UPDATE contacts SET deleted_at = now()"
    " WHERE tenant = $1 AND id = $2 AND deleted_at IS NULL AND $3 <> '' AND $4 <> ''",
    "hard_delete": "DELETE FROM contacts WHERE tenant = $1 AND id = $2 AND $3 <> '' AND $4 <> ''",
    "upsert": "SELECT * FROM crmsync_upsert_contacts(ARRAY[$2], ARRAY[$1], ARRAY[$3],"
    " ARRAY[$4], ARRAY[NULL::text], ARRAY[NULL::text], ARRAY['active'])",
}


async def outbox_versions(pg: asyncpg.Pool[Any], tenant: str, cid: str) -> list[int]:
    rows = await pg.fetch(
        "SELECT version FROM outbox WHERE tenant = $1 AND contact_id = $2 ORDER BY id", tenant, cid
    )
    return [r["version"] for r in rows]


async def test_a_contact_deleted_and_written_again_continues_after_its_last_version(
    pool: asyncpg.Pool[Any],
) -> None:
    await pool.execute(WRITES["insert"], "default", "c1", "old@x.io", "Old")
    # The ledger synced version 1 of the old contact.
    synced = LedgerRow("X1", 1, "synced")
    await pool.execute(WRITES["hard_delete"], "default", "c1", "-", "-")
    await pool.execute(WRITES["insert"], "default", "c1", "new@x.io", "New")
    row = await pool.fetchrow("SELECT * FROM contacts WHERE id = 'c1'")
    assert row is not None
    assert row["version"] == 3  # 1, the delete's 2, then 3
    assert await outbox_versions(pool, "default", "c1") == [1, 2, 3]
    contact = Contact("c1", "default", row["email"], "New", None, None, "active", row["version"])
    assert decide("salesforce", contact, synced).action == "update"
    # Another tenant's contact of the same id starts afresh.
    await pool.execute(WRITES["insert"], "t2", "c1", "t2@x.io", "T2")
    assert await pool.fetchval("SELECT version FROM contacts WHERE tenant = 't2'") == 1


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(st.lists(st.sampled_from(sorted(WRITES)), min_size=1, max_size=12))
async def test_outbox_versions_only_grow(pool: asyncpg.Pool[Any], ops: list[str]) -> None:
    tenant = "default"
    cid = f"h{abs(hash(tuple(ops))) % 10**9}-{len(ops)}"
    await pool.execute("DELETE FROM contacts WHERE id = $1", cid)
    before = len(await outbox_versions(pool, tenant, cid))
    for i, op in enumerate(ops):
        await pool.execute(WRITES[op], tenant, cid, f"{cid}-{i}@x.io", f"n{i}")
    versions = (await outbox_versions(pool, tenant, cid))[before:]
    assert versions == sorted(set(versions)), (ops, versions)
