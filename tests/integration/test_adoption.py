"""Existing records adopted (``match=email``): the real adapters against the mock
CRMs seeded with contacts that have the same emails, single and batch mode.

Every case ends with 0 duplicates by email in the CRM, every contact's record
carrying our id, the CRM id in the result, and the extra requests counted on
the send's write watch (each one a permit)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from crmsync.crm import make_adapter
from crmsync.crm.base import CrmAdapter, Op, RecordResult
from crmsync.crm.http import WriteWatch
from crmsync.errors import Permanent
from crmsync.model import Contact
from crmsync_lab.mock.config import AccountSpec
from crmsync_lab.mock.limits import Window
from crmsync_lab.mock.server import MockHandle
from support import StartMock

CRMS = ["salesforce", "hubspot"]
MODES = ["single", "batch"]
EXT = {"salesforce": "CrmSync_Id__c", "hubspot": "crmsync_id"}
EMAIL = {"salesforce": "Email", "hubspot": "email"}


@pytest.fixture
async def mock(start_mock_crm: StartMock) -> MockHandle:
    specs = [
        AccountSpec("salesforce", "sf", limits=(Window(0, 1000),)),
        AccountSpec("salesforce", "sf-rule", limits=(Window(0, 1000),), duplicate_rule="block"),
        AccountSpec("hubspot", "hs", limits=(Window(0, 1000),)),
    ]
    return await start_mock_crm(*specs, latency_ms=0.2, jitter_ms=0.1, seed=3)


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=50)) as s:
        yield s


def adapter(
    mock: MockHandle, session: aiohttp.ClientSession, crm: str, account: str, **settings: Any
) -> CrmAdapter:
    return make_adapter(
        crm,
        base_url=mock.base_url(crm, account),
        token=mock.token(crm, account),
        settings=settings,
        session=session,
    )


def contact(i: int, email: str | None = None) -> Contact:
    return Contact(
        f"c{i}", "default", email or f"p{i}@example.com", "Ada", f"L{i}", "Acme", "active", 1
    )


def seed(mock: MockHandle, crm: str, account: str, emails: list[str]) -> list[str]:
    rows = [{"email": e, "first_name": "Old", "last_name": "Person"} for e in emails]
    out = mock.account(crm, account).seed(rows)
    assert not out["refused"], out
    return list(out["ids"])


class Counted:
    """A write watch counting the send's requests and the permits taken."""

    def __init__(self) -> None:
        self.permits = 0
        self.watch = WriteWatch(lambda: None, self.permit)

    async def permit(self) -> None:
        self.permits += 1


async def send(a: CrmAdapter, ops: list[Op], mode: str) -> tuple[list[RecordResult], int, int]:
    """(results, requests, permits beyond the first request)."""
    if mode == "batch":
        c = Counted()
        res = (await a.send(ops, c.watch)).results
        return list(res), c.watch.calls, c.permits
    out: list[RecordResult] = []
    calls = permits = 0
    for op in ops:
        c = Counted()
        out += (await a.send([op], c.watch)).results
        calls, permits = calls + c.watch.calls, permits + c.permits
    return out, calls, permits


def check_crm(mock: MockHandle, crm: str, account: str, n: int) -> dict[str, dict[str, Any]]:
    """Every contact's record carries our id; no email twice; by our id."""
    recs = mock.records(crm, account)
    rows = [r if crm == "salesforce" else {"Id": r["id"], **r["properties"]} for r in recs]
    emails = [str(r.get(EMAIL[crm]) or "").lower() for r in rows]
    assert len(emails) == len(set(emails)), "a duplicate by email"
    assert mock.account_stats(crm, account)["duplicates_by"] == {"external_id": 0, "email": 0}
    ours = {str(r[EXT[crm]]): r for r in rows if r.get(EXT[crm])}
    assert sorted(ours) == sorted(f"c{i}" for i in range(n))
    return ours


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    ("crm", "account"), [("salesforce", "sf"), ("salesforce", "sf-rule"), ("hubspot", "hs")]
)
async def test_existing_records_are_adopted(
    mock: MockHandle, session: aiohttp.ClientSession, crm: str, account: str, mode: str
) -> None:
    contacts = [contact(i) for i in range(6)]
    # Half of them exist already, one with its email in other letters' case.
    old = seed(mock, crm, account, ["p0@example.com", "P2@Example.com", "p4@example.com"])
    a = adapter(mock, session, crm, account, match="email")
    ops = [Op("create", c.id, c, None) for c in contacts]
    results, calls, permits = await send(a, ops, mode)
    assert all(r.ok for r in results), results
    assert [r.adopted for r in results] == [True, False, True, False, True, False]
    assert [r.external_id for r in results[::2]] == old  # the ledger gets the CRM's id
    assert all(r.created is False for r in results[::2])
    ours = check_crm(mock, crm, account, 6)
    assert ours["c0"][EMAIL[crm]] == "p0@example.com"
    last = "LastName" if crm == "salesforce" else "lastname"
    assert {r[last] for r in ours.values()} == {f"L{i}" for i in range(6)}, "the update landed"
    assert calls == mock.account_stats(crm, account)["requests"], "every request counted"
    assert permits == calls - (1 if mode == "batch" else len(ops)), "a permit for each further"
    # Sent again (an update, the ledger knows the ids): nothing adopted, no lookup.
    again = [Op("update", c.id, c, r.external_id) for c, r in zip(contacts, results, strict=True)]
    results2, calls2, _ = await send(a, again, mode)
    assert all(r.ok and not r.adopted for r in results2)
    assert calls2 == (1 if mode == "batch" else len(ops))
    check_crm(mock, crm, account, 6)


@pytest.mark.parametrize(("crm", "account"), [("salesforce", "sf"), ("hubspot", "hs")])
async def test_a_record_of_another_contact_is_never_taken(
    mock: MockHandle, session: aiohttp.ClientSession, crm: str, account: str
) -> None:
    """Two contacts with one email: the first adopts the record, the second does
    not take it from the first (HubSpot refuses a second record with the email)."""
    seed(mock, crm, account, ["same@example.com"])
    a = adapter(mock, session, crm, account, match="email")
    first = (await a.send([Op("create", "c0", contact(0, "same@example.com"), None)])).results[0]
    assert first.ok and first.adopted
    op = Op("create", "c1", contact(1, "same@example.com"), None)
    if crm == "hubspot":
        with pytest.raises(Permanent) as caught:  # a dead letter, the email named
            await a.send([op])
        assert caught.value.code == "CONFLICT"
        batch = await a.send([op, Op("create", "c2", contact(2), None)])
        assert [r.ok for r in batch.results] == [False, True]
    else:  # Salesforce without a duplicate rule holds a second record
        res = (await a.send([op])).results[0]
        assert res.ok and res.created and not res.adopted
    recs = mock.records(crm, account)
    owner = [r for r in recs if (r if crm == "salesforce" else r["properties"])[EXT[crm]] == "c0"]
    assert len(owner) == 1 and (owner[0].get("Id") or owner[0]["id"]) == first.external_id


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(("crm", "account"), [("salesforce", "sf-rule"), ("hubspot", "hs")])
async def test_match_none_keeps_creating(
    mock: MockHandle, session: aiohttp.ClientSession, crm: str, account: str, mode: str
) -> None:
    """Without match=email an existing email is the CRM's refusal, as before."""
    seed(mock, crm, account, ["p1@example.com"])
    a = adapter(mock, session, crm, account)
    ops = [Op("create", f"c{i}", contact(i), None) for i in range(3)]
    if mode == "single":
        with pytest.raises(Permanent):
            await a.send([ops[1]])
        results = [(await a.send([ops[i]])).results[0] for i in (0, 2)]
        assert all(r.ok for r in results)
    else:
        results, _, _ = await send(a, ops, mode)
        assert [r.ok for r in results] == [True, False, True]
        assert all(not r.adopted for r in results)
    assert mock.account_stats(crm, account)["duplicates_by"]["email"] == 0


async def test_an_email_needing_soql_escapes_is_found(
    mock: MockHandle, session: aiohttp.ClientSession
) -> None:
    email = "o'hara+x@example.com"
    (sf_id,) = seed(mock, "salesforce", "sf", [email])
    a = adapter(mock, session, "salesforce", "sf", match="email")
    res = (await a.send([Op("create", "c9", contact(9, email), None)])).results[0]
    assert res.ok and res.adopted and res.external_id == sf_id
