"""Adoption paths the mock CRMs do not take, on scripted answers: a HubSpot that
refuses a whole batch for a taken email, a Salesforce duplicate rule that knows
a record the lookup did not find (written meanwhile)."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest
from multidict import CIMultiDict

from crmsync.crm import make_adapter
from crmsync.crm.base import CrmAdapter, Op
from crmsync.crm.http import Headers
from crmsync.crm.salesforce import soql_text
from crmsync.errors import Retryable
from crmsync.model import Contact

Script = list[tuple[str, str, tuple[int, Any]]]  # (method, url part, answer)


def contact(i: int) -> Contact:
    return Contact(f"c{i}", "default", f"c{i}@example.com", "Ada", f"L{i}", "Acme", "active", 1)


async def scripted(crm: str, script: Script) -> tuple[CrmAdapter, list[tuple[str, str, Any]]]:
    session = aiohttp.ClientSession()
    await session.close()  # never used: _call is scripted
    a = make_adapter(
        crm, base_url="http://crm", token="t", settings={"match": "email"}, session=session
    )
    sent: list[tuple[str, str, Any]] = []

    async def call(
        method: str, url: str, payload: Any = None, watch: Any = None
    ) -> tuple[int, Headers, Any]:
        want_method, part, (status, body) = script.pop(0)
        assert (method, part in url) == (want_method, True), (method, url)
        sent.append((method, url, payload))
        return status, CIMultiDict(), body

    a._call = call  # type: ignore[attr-defined]
    return a, sent


def hs_ok(*ids_and_keys: tuple[str, str]) -> dict[str, Any]:
    return {
        "status": "COMPLETE",
        "results": [{"id": i, "properties": {"crmsync_id": k}} for i, k in ids_and_keys],
    }


async def test_hubspot_whole_batch_refused_for_a_taken_email() -> None:
    conflict = {
        "status": "error",
        "message": "Contact already exists. Existing ID: 77",
        "category": "CONFLICT",
    }
    script: Script = [
        ("POST", "/batch/upsert", (409, conflict)),
        (
            "POST",
            "/batch/read",
            (
                200,
                {
                    "results": [
                        {"id": "77", "properties": {"email": "C1@example.com", "crmsync_id": None}}
                    ]
                },
            ),
        ),
        ("POST", "/batch/update", (200, {"results": [{"id": "77", "properties": {}}]})),
        ("POST", "/batch/upsert", (200, hs_ok(("88", "c2")))),
    ]
    a, sent = await scripted("hubspot", script)
    res = await a.send([Op("create", "c1", contact(1), None), Op("create", "c2", contact(2), None)])
    assert [(r.ok, r.external_id, r.adopted) for r in res.results] == [
        (True, "77", True),
        (True, "88", False),
    ]
    read = sent[1][2]
    assert read["idProperty"] == "email" and {"id": "c1@example.com"} in read["inputs"]
    assert sent[2][2]["inputs"][0]["properties"]["crmsync_id"] == "c1"
    assert [i["id"] for i in sent[3][2]["inputs"]] == ["c2"]  # sent again without c1
    assert script == []


async def test_hubspot_never_takes_a_record_with_another_crmsync_id() -> None:
    conflict = {"status": "error", "message": "Existing ID: 5", "category": "CONFLICT"}
    script: Script = [
        ("POST", "/objects/contacts", (409, conflict)),
        ("POST", "/batch/read", (200, hs_ok(("5", "someone-else")))),
        ("PATCH", "idProperty=crmsync_id", (404, {"status": "error", "message": "not found"})),
    ]
    a, sent = await scripted("hubspot", script)
    with pytest.raises(Exception, match="Existing ID: 5"):
        await a.send([Op("create", "c1", contact(1), None)])
    assert not any("/batch/update" in url for _, url, _ in sent)


async def test_salesforce_duplicate_rule_after_the_lookup_adopts() -> None:
    dup = [{"errorCode": "DUPLICATES_DETECTED", "message": "Use one of these records?"}]
    script: Script = [
        ("GET", "/query?q=", (200, {"records": [], "totalSize": 0, "done": True})),
        ("PATCH", "/CrmSync_Id__c/c1", (400, dup)),
        (
            "GET",
            "/query?q=",
            (200, {"records": [{"Id": "003A", "Email": "c1@example.com", "CrmSync_Id__c": None}]}),
        ),
        ("PATCH", "/sobjects/Contact/003A", (204, None)),
    ]
    a, sent = await scripted("salesforce", script)
    res = await a.send([Op("create", "c1", contact(1), None)])
    assert [(r.ok, r.external_id, r.adopted) for r in res.results] == [(True, "003A", True)]
    assert sent[3][2]["CrmSync_Id__c"] == "c1" and sent[3][2]["LastName"] == "L1"
    assert script == []


@pytest.mark.parametrize(
    ("value", "literal"),
    [
        ("a@b.c", "'a@b.c'"),
        ("o'hara@b.c", "'o\\'hara@b.c'"),
        ("a\\b@c.d", "'a\\\\b@c.d'"),
        ('q"x@y.z', "'q\\\"x@y.z'"),
        ("n\nl", "'n\\nl'"),
    ],
)
def test_soql_literals_escape_quotes_and_backslashes(value: str, literal: str) -> None:
    assert soql_text(value) == literal


async def test_salesforce_batch_one_query_then_upsert_and_update() -> None:
    found = {
        "records": [
            {"Id": "003X", "Email": "C0@EXAMPLE.COM", "CrmSync_Id__c": None},
            {"Id": "003Y", "Email": "c1@example.com", "CrmSync_Id__c": "c1"},  # ours already
            {"Id": "003Z", "Email": "c2@example.com", "CrmSync_Id__c": "c7"},  # c7's: not taken
        ]
    }
    created = {"id": "003N", "success": True, "errors": [], "created": True}
    updated: list[dict[str, Any]] = [
        {"id": i, "success": True, "errors": []} for i in ("003X", "003Y")
    ]
    script: Script = [
        ("GET", "/query?q=", (200, found)),
        ("PATCH", "/sobjects/Contact/CrmSync_Id__c/c2", (201, created)),
        ("PATCH", "/composite/sobjects", (200, updated)),
    ]
    a, sent = await scripted("salesforce", script)
    ops = [Op("create", f"c{i}", contact(i), None) for i in range(3)]
    res = await a.send(ops)
    assert [(r.ok, r.external_id, r.adopted) for r in res.results] == [
        (True, "003X", True),
        (True, "003Y", False),  # our own earlier create, found again: not adopted
        (True, "003N", False),
    ]
    query = sent[0][1]
    for i in range(3):  # one query for the request, every email in it
        assert f"c{i}%40example.com" in query
    assert [(r["Id"], r["CrmSync_Id__c"]) for r in sent[2][2]["records"]] == [
        ("003X", "c0"),
        ("003Y", "c1"),
    ]
    assert script == []


async def test_hubspot_whole_batch_refused_again_only_without_taken_emails() -> None:
    conflict = {"status": "error", "message": "Existing ID: 77", "category": "CONFLICT"}
    read = {
        "results": [
            {"id": "77", "properties": {"email": "c1@example.com", "crmsync_id": ""}},
            {"id": "78", "properties": {"email": "c2@example.com", "crmsync_id": "other"}},
        ]
    }
    script: Script = [
        ("POST", "/batch/upsert", (409, conflict)),
        ("POST", "/batch/read", (200, read)),
        ("POST", "/batch/update", (200, {"results": [{"id": "77", "properties": {}}]})),
        ("POST", "/batch/upsert", (200, hs_ok(("90", "c3")))),
    ]
    a, sent = await scripted("hubspot", script)
    res = await a.send([Op("create", f"c{i}", contact(i), None) for i in (1, 2, 3)])
    assert [(r.ok, r.external_id, r.adopted) for r in res.results] == [
        (True, "77", True),
        (False, None, False),
        (True, "90", False),
    ]
    err = res.results[1].error
    assert err is not None and err.code == "CONFLICT" and "another contact" in err.message
    assert [i["id"] for i in sent[3][2]["inputs"]] == ["c3"]
    assert script == []


async def test_salesforce_a_record_deleted_before_its_adoption_is_retried() -> None:
    found = {"records": [{"Id": "003A", "Email": "c1@example.com", "CrmSync_Id__c": None}]}
    gone = [{"errorCode": "ENTITY_IS_DELETED", "message": "entity is deleted"}]
    script: Script = [
        ("GET", "/query?q=", (200, found)),
        ("PATCH", "/sobjects/Contact/003A", (404, gone)),
    ]
    a, _ = await scripted("salesforce", script)
    (res,) = (await a.send([Op("create", "c1", contact(1), None)])).results
    assert not res.ok and isinstance(res.error, Retryable)
    assert res.error.code == "ENTITY_IS_DELETED"
