"""Existing records, field mapping and required fields through the whole worker:
real PostgreSQL and Redis, the mock CRMs over HTTP, single and batch mode.

Part of the contacts already exist in both CRMs (seeded with the same emails,
without our id): they are adopted, never duplicated nor dead-lettered. A custom
attribute reaches a custom field through the mapping. A Salesforce contact
without a last name is skipped with the reason and costs no request; given one
later, it syncs."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from test_worker import System, _running

from crmsync.report import collect
from crmsync.settings import Settings
from crmsync_lab.mock.config import AccountSpec
from crmsync_lab.mock.limits import Window
from support import StartMock, to_mock

N = 30
EXISTING = range(0, N, 3)  # every third contact already in the CRMs
MAPPING = {
    "salesforce": {"Email": "email|lower", "Title": "attributes.title", "LeadSource": "=crmsync"},
    "hubspot": {"email": "email|lower", "jobtitle": "attributes.title|upper"},
}


@pytest.fixture(params=[1, 50], ids=["single", "batch"])
async def system(
    request: pytest.FixtureRequest, settings: Settings, start_mock_crm: StartMock
) -> AsyncIterator[System]:
    s = settings.model_copy(update={"worker_concurrency": 50, "lease_seconds": 5.0})
    mock = await start_mock_crm(
        AccountSpec("salesforce", "acme", limits=(Window(200, 1000),)),
        AccountSpec("salesforce", "rule", limits=(Window(200, 1000),), duplicate_rule="block"),
        AccountSpec("hubspot", "acme", limits=(Window(200, 1000),)),
        latency_ms=1,
        jitter_ms=1,
    )
    for crm, account in (("salesforce", "acme"), ("salesforce", "rule"), ("hubspot", "acme")):
        rows = [
            {"email": f"C{i}@Example.com", "first_name": "Old", "last_name": "Person"}
            for i in EXISTING
        ]
        assert not mock.account(crm, account).seed(rows)["refused"]
    specs = [
        to_mock(
            mock,
            cid,
            crm,
            account,
            per_second=200,
            settings={"batch_size": request.param, "match": "email", "field_map": MAPPING[crm]},
        )
        for cid, crm, account in (
            ("sf", "salesforce", "acme"),
            ("sf-rule", "salesforce", "rule"),
            ("hs", "hubspot", "acme"),
        )
    ]
    async with _running(s, mock, specs) as system:
        yield system


def rows_of(system: System, crm: str, account: str) -> list[dict[str, Any]]:
    recs = system.mock.records(crm, account)
    return [r if crm == "salesforce" else {"Id": r["id"], **r["properties"]} for r in recs]


CONNS = (("sf", "salesforce", "acme"), ("sf-rule", "salesforce", "rule"), ("hs", "hubspot", "acme"))
EXT = {"salesforce": "CrmSync_Id__c", "hubspot": "crmsync_id"}


async def test_existing_records_adopted_attributes_mapped_required_skipped(system: System) -> None:
    pool = system.pool
    await pool.executemany(
        "INSERT INTO contacts (id, email, first_name, last_name, company, attributes)"
        " VALUES ($1, $2, 'Ada', $3, 'Acme', $4)",
        [
            (f"c{i}", f"c{i}@example.com", None if i == 1 else f"L{i}", {"title": f"t{i}"})
            for i in range(N)
        ],
    )

    async def settled() -> bool:
        for cid, _, _ in CONNS:
            ledger = await system.ledger(cid)
            done = {k for k, r in ledger.items() if r["status"] in ("synced", "skipped")}
            if len(done) != N:
                return False
        return True

    await system.wait_for(settled)
    report = await collect(pool, system.redis)
    by_id = {c["id"]: c for c in report["connections"]}
    for cid, crm, account in CONNS:
        rows = rows_of(system, crm, account)
        email = "Email" if crm == "salesforce" else "email"
        emails = [r[email].lower() for r in rows]
        assert len(emails) == len(set(emails)), f"{cid}: a duplicate by email"
        ledger = await system.ledger(cid)
        ours = {r[EXT[crm]]: r for r in rows if r.get(EXT[crm])}
        skipped = {k for k, r in ledger.items() if r["status"] == "skipped"}
        if crm == "salesforce":
            # c1 has no last name: skipped with the reason, never sent.
            assert skipped == {"c1"}
            assert ledger["c1"]["rule"] == "mapping.required"
            assert "LastName is required by Salesforce" in ledger["c1"]["last_error"]
        else:
            assert skipped == set()
        expected = {f"c{i}" for i in range(N)} - skipped
        assert set(ours) == expected
        assert len(rows) == len(expected)  # c1 (not seeded) never reached Salesforce
        for key in expected:  # the ledger holds the CRM's id of each record
            assert ledger[key]["external_id"] == ours[key]["Id"]
        counters = by_id[cid]["counters"]
        adopted = len([i for i in EXISTING if f"c{i}" in expected])
        assert int(counters.get("adopted", 0)) == adopted, (cid, counters)
        assert int(counters.get("created", 0)) == len(expected) - adopted
        assert by_id[cid]["dead_letters"] == 0
        # The mapping: a lower-cased email, an attribute, a constant.
        c3 = ours["c3"]  # an adopted one
        if crm == "salesforce":
            assert (c3["Email"], c3["Title"], c3["LeadSource"]) == (
                "c3@example.com",
                "t3",
                "crmsync",
            )
        else:
            assert (c3["email"], c3["jobtitle"]) == ("c3@example.com", "T3")
        # Every request the CRM saw is in the connection's counter.
        stats = system.mock.account_stats(crm, account)
        assert int(counters["requests"]) == stats["requests"]
        assert stats["duplicates"] == 0

    # c1 gets a last name: it syncs; an attribute change is a change.
    before = system.mock.account_stats("salesforce", "acme")["requests"]
    await pool.execute("UPDATE contacts SET last_name = 'Late' WHERE id = 'c1'")
    await pool.execute(
        "UPDATE contacts SET attributes = $1 WHERE id = 'c2'", {"title": "new title"}
    )

    async def caught_up() -> bool:
        sf = {r.get("CrmSync_Id__c"): r for r in rows_of(system, "salesforce", "acme")}
        return (
            sf.get("c1", {}).get("LastName") == "Late"
            and sf.get("c2", {}).get("Title") == "new title"
        )

    await system.wait_for(caught_up)
    assert system.mock.account_stats("salesforce", "acme")["requests"] > before
    version = await pool.fetchval("SELECT version FROM contacts WHERE id = 'c2'")
    assert version == 2
