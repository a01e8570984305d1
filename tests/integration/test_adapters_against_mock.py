"""The real adapters against the mock CRMs over HTTP, single-record and batch mode."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from crmsync.crm import make_adapter
from crmsync.crm.base import CrmAdapter, Op
from crmsync.crm.http import WriteWatch
from crmsync.errors import AuthFailed, Permanent, RateLimited, Retryable
from crmsync.model import Contact
from crmsync_lab.mock.config import AccountSpec
from crmsync_lab.mock.limits import Window
from crmsync_lab.mock.server import MockHandle
from support import StartMock

ACCOUNTS = {"salesforce": "sf-a", "hubspot": "hs-a"}
CRMS = ["salesforce", "hubspot"]
MODES = ["single", "batch"]


@pytest.fixture
async def mock(start_mock_crm: StartMock) -> MockHandle:
    specs = [AccountSpec(crm, name, limits=(Window(0, 1000),)) for crm, name in ACCOUNTS.items()]
    specs.append(AccountSpec("salesforce", "sf-slow", limits=(Window(2, 1000),)))
    specs.append(AccountSpec("hubspot", "hs-slow", limits=(Window(2, 1000),)))
    return await start_mock_crm(*specs, latency_ms=0.5, jitter_ms=0.2, seed=7)


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=50)) as s:
        yield s


def adapter(
    mock: MockHandle,
    session: aiohttp.ClientSession,
    crm: str,
    account: str | None = None,
    **settings: Any,
) -> CrmAdapter:
    name = account or ACCOUNTS[crm]
    return make_adapter(
        crm,
        base_url=mock.base_url(crm, name),
        token=mock.token(crm, name),
        settings=settings,
        session=session,
    )


def contact(
    i: int, *, last: str | None = "Lovelace", email: str | None = None, company: str = "Acme"
) -> Contact:
    email = email or f"c{i}@example.com"
    return Contact(f"c{i}", "default", email, "Ada", last, company, "active", 1)


async def send_all(a: CrmAdapter, ops: list[Op], mode: str) -> list[Any]:
    """All ops in one request (batch) or one request each (single)."""
    if mode == "batch":
        return list((await a.send(ops)).results)
    return [(await a.send([op])).results[0] for op in ops]


def fields_of(mock: MockHandle, crm: str, account: str | None = None) -> dict[str, dict[str, Any]]:
    """Current records keyed by our contact id."""
    recs = mock.records(crm, account or ACCOUNTS[crm])
    if crm == "salesforce":
        return {r["CrmSync_Id__c"]: r for r in recs}
    return {r["properties"]["crmsync_id"]: {"Id": r["id"], **r["properties"]} for r in recs}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("crm", CRMS)
async def test_create_update_delete(
    mock: MockHandle, session: aiohttp.ClientSession, crm: str, mode: str
) -> None:
    a = adapter(mock, session, crm)
    created = await send_all(a, [Op("create", f"c{i}", contact(i), None) for i in range(4)], mode)
    assert all(r.ok and r.created for r in created), created
    ids = {r.contact_id: r.external_id for r in created}
    recs = fields_of(mock, crm)
    assert {k: v["Id"] for k, v in recs.items()} == ids
    updates = [Op("update", f"c{i}", contact(i, company="Globex"), ids[f"c{i}"]) for i in range(4)]
    updated = await send_all(a, updates, mode)
    assert all(r.ok and r.created is False for r in updated)
    assert [r.external_id for r in updated] == [ids[f"c{i}"] for i in range(4)]
    company = "Company__c" if crm == "salesforce" else "company"
    assert {v[company] for v in fields_of(mock, crm).values()} == {"Globex"}
    deletes = [Op("delete", f"c{i}", None, ids[f"c{i}"]) for i in range(4)]
    deleted = await send_all(a, deletes, mode)
    assert all(r.ok for r in deleted)
    assert fields_of(mock, crm) == {}
    # Deleting again is a success: the record is already gone.
    again = await send_all(a, deletes, mode)
    assert all(r.ok for r in again)
    stats = mock.account_stats(crm, ACCOUNTS[crm])
    expected = 16 if mode == "single" else 4
    assert stats["requests"] == expected and stats["duplicates"] == 0


@pytest.mark.parametrize("crm", CRMS)
async def test_partial_batch_failure_fails_only_the_bad_record(
    mock: MockHandle, session: aiohttp.ClientSession, crm: str
) -> None:
    a = adapter(mock, session, crm)
    # Salesforce requires LastName; HubSpot rejects a malformed email.
    bad = contact(1, last=None) if crm == "salesforce" else contact(1, email="not-an-email")
    ops = [
        Op("create", "c0", contact(0), None),
        Op("create", "c1", bad, None),
        Op("create", "c2", contact(2), None),
    ]
    res = (await a.send(ops)).results
    assert [r.contact_id for r in res] == ["c0", "c1", "c2"]
    assert res[0].ok and res[2].ok
    assert not res[1].ok and isinstance(res[1].error, Permanent)
    if crm == "salesforce":
        assert res[1].error.code == "REQUIRED_FIELD_MISSING"
        assert res[1].error.message == "Required fields are missing: [LastName]"
    else:
        assert res[1].error.code == "VALIDATION_ERROR" and "INVALID_EMAIL" in res[1].error.message
    assert set(fields_of(mock, crm)) == {"c0", "c2"}
    # Single mode: the same record fails the whole request with the same error.
    with pytest.raises(Permanent):
        await a.send([Op("create", "c1", bad, None)])


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("crm", CRMS)
async def test_lost_response_retried_creates_no_duplicate(
    mock: MockHandle, session: aiohttp.ClientSession, crm: str, mode: str
) -> None:
    a = adapter(mock, session, crm)
    ops = [Op("create", f"c{i}", contact(i), None) for i in range(3)]
    mock.set_faults(ACCOUNTS[crm], lost_rate=1.0)
    with pytest.raises(Retryable):
        await (a.send(ops) if mode == "batch" else a.send(ops[:1]))
    assert len(fields_of(mock, crm)) == (3 if mode == "batch" else 1)  # the write was applied
    mock.set_faults(ACCOUNTS[crm], lost_rate=0.0)
    res = await send_all(a, ops, mode)  # the worker's retry, same ops
    assert all(r.ok for r in res)
    recs = fields_of(mock, crm)
    assert set(recs) == {"c0", "c1", "c2"}
    assert {r.contact_id: r.external_id for r in res} == {k: v["Id"] for k, v in recs.items()}
    stats = mock.account_stats(crm, ACCOUNTS[crm])
    assert stats["duplicates"] == 0 and stats["lost_responses"] == 1
    # The ledger never got the CRM id of c0; deleting it still works.
    res = await send_all(a, [Op("delete", "c0", None, None), Op("delete", "c1", None, None)], mode)
    assert all(r.ok for r in res) and set(fields_of(mock, crm)) == {"c2"}


@pytest.mark.parametrize("crm", CRMS)
async def test_revoked_token_is_auth_failed(
    mock: MockHandle, session: aiohttp.ClientSession, crm: str
) -> None:
    mock.set_faults(ACCOUNTS[crm], revoke_token=True)
    a = adapter(mock, session, crm)
    with pytest.raises(AuthFailed) as caught:
        await a.send([Op("create", "c1", contact(1), None)])
    assert caught.value.status == 401
    wrong = make_adapter(
        crm, base_url=mock.base_url(crm, ACCOUNTS[crm]), token="nope", settings={}, session=session
    )
    mock.set_faults(ACCOUNTS[crm], revoke_token=False)
    with pytest.raises(AuthFailed):
        await wrong.send(
            [Op("create", "c1", contact(1), None), Op("create", "c2", contact(2), None)]
        )
    assert (await a.send([Op("create", "c1", contact(1), None)])).results[0].ok


@pytest.mark.parametrize("crm", CRMS)
async def test_over_the_limit_is_rate_limited(
    mock: MockHandle, session: aiohttp.ClientSession, crm: str
) -> None:
    account = "sf-slow" if crm == "salesforce" else "hs-slow"
    a = adapter(mock, session, crm, account)
    for i in range(2):
        assert (await a.send([Op("create", f"c{i}", contact(i), None)])).results[0].ok
    with pytest.raises(RateLimited) as caught:
        await a.send([Op("create", "c9", contact(9), None)])
    assert 0 < caught.value.retry_after <= 1.0
    assert caught.value.status == (403 if crm == "salesforce" else 429)
    stats = mock.account_stats(crm, account)
    assert stats["violations"] == 1 and stats["max_in_any_1s"] == 3


@pytest.mark.parametrize("crm", CRMS)
async def test_server_errors_outage_and_timeouts_are_retryable(
    mock: MockHandle, session: aiohttp.ClientSession, crm: str
) -> None:
    a = adapter(mock, session, crm, timeout_seconds=0.3)
    op = [Op("create", "c1", contact(1), None)]
    mock.set_faults(ACCOUNTS[crm], error_rate=1.0)
    with pytest.raises(Retryable) as caught:
        await a.send(op)
    assert caught.value.status in (500, 503)
    mock.set_faults(ACCOUNTS[crm], error_rate=0.0, outage_seconds=30)
    with pytest.raises(Retryable) as caught:
        await a.send(op)
    assert caught.value.status == 503
    mock.set_faults(ACCOUNTS[crm], outage_seconds=0, slow_ms=1000)
    with pytest.raises(Retryable) as caught:
        await a.send(op)
    assert caught.value.code == "TIMEOUT"
    mock.set_faults(ACCOUNTS[crm], clear=True)
    assert (await a.send(op)).results[0].ok


async def test_hubspot_single_create_of_a_taken_email_is_a_conflict(
    mock: MockHandle, session: aiohttp.ClientSession
) -> None:
    a = adapter(mock, session, "hubspot")
    assert (await a.send([Op("create", "c1", contact(1, email="same@example.com"), None)])).results
    with pytest.raises(Permanent) as caught:
        await a.send([Op("create", "c2", contact(2, email="same@example.com"), None)])
    assert caught.value.code == "CONFLICT" and caught.value.status == 409
    assert set(fields_of(mock, "hubspot")) == {"c1"}


@pytest.mark.parametrize("crm", CRMS)
async def test_ids_that_need_encoding_reach_the_crm_intact(
    mock: MockHandle, session: aiohttp.ClientSession, crm: str
) -> None:
    """URLs are encoded once by the adapter (quoted parts on an encoded base) and
    sent as they are: an id with a slash, a space, a '%' or 'é' stays one id."""
    a = adapter(mock, session, crm)
    odd = ["a/b", "with space", "50%off", "café", "q?x=1&y"]
    ops = [
        Op(
            "create",
            cid,
            Contact(cid, "default", f"u{i}@example.com", "Ada", "L", "Acme", "active", 1),
            None,
        )
        for i, cid in enumerate(odd)
    ]
    created = await send_all(a, ops, "single")
    assert all(r.ok for r in created), created
    assert set(fields_of(mock, crm)) == set(odd)
    updates = [
        Op("update", op.contact_id, op.contact, r.external_id)
        for op, r in zip(ops, created, strict=True)
    ]
    assert all(r.ok and r.created is False for r in await send_all(a, updates, "single"))
    assert mock.account_stats(crm, ACCOUNTS[crm])["duplicates"] == 0


@pytest.mark.parametrize("crm", CRMS)
async def test_every_request_of_a_send_reports_to_its_watch(
    mock: MockHandle, session: aiohttp.ClientSession, crm: str
) -> None:
    """A send's first request is reported written; each further request of it
    (deletes without a CRM id go one by one, HubSpot's after a lookup) first
    takes a permit: every request the CRM counts had one."""
    a = adapter(mock, session, crm)
    await send_all(a, [Op("create", f"c{i}", contact(i), None) for i in range(3)], "batch")
    events: list[str] = []

    async def permit() -> None:
        events.append("permit")

    before = mock.account_stats(crm, ACCOUNTS[crm])["requests"]
    deletes = [Op("delete", f"c{i}", None, None) for i in range(3)]
    res = await a.send(deletes, WriteWatch(lambda: events.append("written"), permit))
    assert all(r.ok for r in res.results)
    sent = mock.account_stats(crm, ACCOUNTS[crm])["requests"] - before
    assert sent > 1 and events == ["written"] + ["permit"] * (sent - 1)
    assert not fields_of(mock, crm)


@pytest.mark.parametrize("crm", CRMS)
async def test_a_create_that_may_have_reached_the_crm_never_makes_a_second_record(
    mock: MockHandle, session: aiohttp.ClientSession, crm: str
) -> None:
    """The ledger says an earlier create may have reached the CRM (its answer was
    lost): HubSpot looks the contact up by crmsync_id and updates it; Salesforce's
    upsert by external id is one already. Nothing there yet: created once."""
    a = adapter(mock, session, crm)
    first = (await a.send([Op("create", "c1", contact(1), None)])).results[0]
    assert first.ok
    again = Op("create", "c1", contact(1, last="Again"), None, maybe_exists=True)
    res = (await a.send([again])).results[0]
    assert res.ok and res.external_id == first.external_id and res.created is False
    fresh = (await a.send([Op("create", "c2", contact(2), None, maybe_exists=True)])).results[0]
    assert fresh.ok and fresh.created is True
    records = fields_of(mock, crm)
    assert sorted(records) == ["c1", "c2"] and len(mock.records(crm, ACCOUNTS[crm])) == 2
    last = records["c1"]["LastName" if crm == "salesforce" else "lastname"]
    assert last == "Again"


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("crm", CRMS)
async def test_a_delete_without_the_crm_id_goes_by_our_id(
    mock: MockHandle, session: aiohttp.ClientSession, crm: str, mode: str
) -> None:
    """No CRM id in the ledger (a lost answer, a worker killed before its ledger
    write, a 2xx without an id): the delete finds the record by our id; one
    that is not there is a success at the cost of one request."""
    a = adapter(mock, session, crm)
    await send_all(a, [Op("create", f"c{i}", contact(i), None) for i in (1, 2)], "single")
    deletes = [Op("delete", f"c{i}", None, None) for i in (1, 2, 3)]
    results = await send_all(a, deletes, mode)
    assert all(r.ok for r in results) and fields_of(mock, crm) == {}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("crm", CRMS)
async def test_an_update_of_a_record_gone_from_the_crm_creates_it_again(
    mock: MockHandle, session: aiohttp.ClientSession, crm: str, mode: str
) -> None:
    """The ledger names a record the CRM no longer has (our delete whose outcome
    was never recorded, then the contact written again): the update creates it
    again, once, and reports its new id."""
    a = adapter(mock, session, crm)
    first = (await a.send([Op("create", "c1", contact(1), None)])).results[0]
    gone = (await a.send([Op("delete", "c1", None, first.external_id)])).results[0]
    assert first.ok and gone.ok and fields_of(mock, crm) == {}
    ops = [Op("update", "c1", contact(1, last="Back"), first.external_id)]
    ops += [Op("create", "c2", contact(2), None)] if mode == "batch" else []
    res = (await send_all(a, ops, mode))[0]
    assert res.ok and res.external_id
    records = fields_of(mock, crm)
    assert records["c1"]["LastName" if crm == "salesforce" else "lastname"] == "Back"
    assert len(mock.records(crm, ACCOUNTS[crm])) == len(ops)
