"""Salesforce answers taken from the public docs, fed through the adapter's mapping."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, cast

import aiohttp
import pytest
from multidict import CIMultiDict

from crmsync.crm import make_adapter
from crmsync.crm.answer import loads
from crmsync.crm.base import Op
from crmsync.crm.http import Headers
from crmsync.crm.quota import DEFAULT_LIMITED_SECONDS
from crmsync.crm.salesforce import (
    SALESFORCE_EXHAUSTED_SECONDS,
    SalesforceAdapter,
    error_for,
    parse_collection,
    parse_delete,
    parse_upsert,
)
from crmsync.errors import AuthFailed, CrmError, Permanent, RateLimited, Retryable, UserError
from crmsync.model import Contact

FIXTURES = json.loads((Path(__file__).parent / "fixtures" / "salesforce.json").read_text())


def answer(name: str) -> tuple[int, Headers, Any]:
    f = FIXTURES[name]
    raw = f["body"] if isinstance(f["body"], str) else json.dumps(f["body"])
    return f["status"], CIMultiDict(f["headers"]), loads(raw.encode() if raw != "null" else b"")


def fields(cid: str, last: str | None = "Lovelace") -> Contact:
    return Contact(cid, "default", f"{cid}@example.com", "Ada", last, "Acme", "active", 1)


def upsert(cid: str, ext: str | None = None) -> Op:
    return Op("update" if ext else "create", cid, fields(cid), ext)


def delete(cid: str, ext: str | None) -> Op:
    return Op("delete", cid, None, ext)


def test_single_upsert_created_updated_and_old_204() -> None:
    res = parse_upsert(upsert("c1"), *answer("upsert_created"))
    assert res.results[0].ok and res.results[0].created is True
    assert res.results[0].external_id == "003RM000006pWkZYAU"
    assert res.block_for is None
    res = parse_upsert(upsert("c1", "003RM000006pWkZYAU"), *answer("upsert_updated"))
    assert res.results[0].ok and res.results[0].created is False
    # API versions before 46 answer an update with 204 and no body: keep the ledger's id.
    res = parse_upsert(upsert("c1", "003OLD"), *answer("upsert_updated_old_api"))
    assert res.results[0].ok and res.results[0].external_id == "003OLD"
    assert res.results[0].created is False


def test_collection_upsert_partial_failure_fails_only_the_bad_records() -> None:
    ops = [upsert("c1", "003RM000006pWkZYAU"), upsert("c2"), upsert("c3"), upsert("c4")]
    res = parse_collection(ops, *answer("collection_upsert_partial"), deleting=False)
    ok, missing, created, locked = res.results
    assert [r.contact_id for r in res.results] == ["c1", "c2", "c3", "c4"]
    assert ok.ok and ok.created is False and ok.external_id == "003RM000006pWkZYAU"
    assert not missing.ok and isinstance(missing.error, Permanent)
    assert missing.error.code == "REQUIRED_FIELD_MISSING"
    assert missing.error.message == "Required fields are missing: [LastName]"
    assert created.ok and created.created is True and created.external_id == "003RM000006pWkaYAE"
    # A row lock clears by itself: that record is retried, not dead-lettered.
    assert not locked.ok and isinstance(locked.error, Retryable)


def test_collection_delete_treats_already_deleted_as_done() -> None:
    ops = [
        delete("c1", "003RM000003oLrfYAE"),
        delete("c2", "003RM000003oLrB000"),
        delete("c3", "x"),
    ]
    res = parse_collection(ops, *answer("collection_delete_partial"), deleting=True)
    first, malformed, gone = res.results
    assert first.ok and first.external_id == "003RM000003oLrfYAE" and first.created is None
    assert not malformed.ok and isinstance(malformed.error, Permanent)
    assert malformed.error.code == "MALFORMED_ID"
    assert gone.ok and gone.external_id == "x"


def test_collection_answer_of_wrong_length_is_retryable() -> None:
    status, headers, body = answer("collection_upsert_partial")
    with pytest.raises(Retryable):
        parse_collection([upsert("c1")], status, headers, body, deleting=False)


@pytest.mark.parametrize(
    ("name", "kind", "code"),
    [
        ("required_field_missing", Permanent, "REQUIRED_FIELD_MISSING"),
        ("invalid_session", AuthFailed, "INVALID_SESSION_ID"),
        ("request_limit_exceeded", RateLimited, "REQUEST_LIMIT_EXCEEDED"),
        ("insufficient_access", Permanent, "INSUFFICIENT_ACCESS_OR_READONLY"),
        ("not_found", Permanent, "NOT_FOUND"),
        ("unknown_exception", Retryable, "UNKNOWN_EXCEPTION"),
        ("server_unavailable", Retryable, "SERVER_UNAVAILABLE"),
    ],
)
def test_whole_request_errors_map_to_crmsync_errors(name: str, kind: type, code: str) -> None:
    status, headers, body = answer(name)
    with pytest.raises(kind) as caught:
        parse_upsert(upsert("c1"), status, headers, body)
    err = caught.value
    assert isinstance(err, CrmError) and type(err) is kind
    assert err.code == code and err.status == status
    assert err.message == body[0]["message"]


def test_request_limit_waits_as_long_as_the_answer_implies() -> None:
    status, headers, body = answer("request_limit_exceeded")
    # api-usage=15001/15000: the org's quota is spent.
    err = error_for(status, headers, body)
    assert isinstance(err, RateLimited) and err.retry_after == SALESFORCE_EXHAUSTED_SECONDS
    err = error_for(status, CIMultiDict(), body)
    assert isinstance(err, RateLimited) and err.retry_after == DEFAULT_LIMITED_SECONDS
    told = CIMultiDict(headers)
    told["Retry-After"] = "3"
    err = error_for(status, told, body)
    assert isinstance(err, RateLimited) and err.retry_after == 3.0


@pytest.mark.parametrize("name", ["delete_entity_is_deleted", "not_found"])
def test_single_delete_of_a_gone_record_is_success(name: str) -> None:
    res = parse_delete(delete("c1", "003RM000003oLrfYAE"), *answer(name))
    assert res.results[0].ok and res.results[0].external_id == "003RM000003oLrfYAE"


def test_single_delete_other_errors_raise() -> None:
    with pytest.raises(AuthFailed):
        parse_delete(delete("c1", "003"), *answer("invalid_session"))
    with pytest.raises(Retryable):
        parse_delete(delete("c1", "003"), *answer("server_unavailable"))


def test_exhausted_api_quota_on_a_success_blocks_the_connection() -> None:
    status, headers, body = answer("upsert_created")
    assert parse_upsert(upsert("c1"), status, headers, body).block_for is None  # 18/15000
    spent = CIMultiDict({"Sforce-Limit-Info": "api-usage=15000/15000"})
    assert parse_upsert(upsert("c1"), status, spent, body).block_for == SALESFORCE_EXHAUSTED_SECONDS


def adapter(settings: dict[str, Any]) -> SalesforceAdapter:
    session = cast(aiohttp.ClientSession, object())  # never used: no request is sent
    a = make_adapter(
        "salesforce",
        base_url="https://x.my.salesforce.com/",
        token="t",
        settings=settings,
        session=session,
    )
    assert isinstance(a, SalesforceAdapter)
    return a


def test_settings_choose_version_external_id_field_and_field_map() -> None:
    a = adapter(
        {
            "api_version": "61.0",
            "external_id_field": "Ext__c",
            "field_map": {"company": "Account_Name__c", "status": None},
        }
    )
    assert a.collection_upsert == (
        "https://x.my.salesforce.com/services/data/v61.0/composite/sobjects/Contact/Ext__c"
    )
    values = a._values(upsert("c1"))
    assert values == {
        "Email": "c1@example.com",
        "FirstName": "Ada",
        "LastName": "Lovelace",
        "Account_Name__c": "Acme",
    }
    # Missing values are sent as null so Salesforce answers for itself (LastName is required).
    assert a._values(Op("create", "c2", fields("c2", last=None), None))["LastName"] is None
    assert a.headers["Authorization"] == "Bearer t"
    assert a.timeout.total == 10.0 and adapter({"timeout_seconds": 2.5}).timeout.total == 2.5


def test_unknown_crm_is_a_user_error() -> None:
    with pytest.raises(UserError, match="pipedrive"):
        make_adapter(
            "pipedrive",
            base_url="http://x",
            token="t",
            settings={},
            session=cast(aiohttp.ClientSession, object()),
        )
