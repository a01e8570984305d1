"""HubSpot answers taken from the public docs and issue threads, fed through the mapping."""

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
from crmsync.crm.hubspot import (
    HubSpotAdapter,
    error_for,
    parse_archive,
    parse_batch_upsert,
    parse_delete,
    parse_single,
    quota_block,
)
from crmsync.errors import AuthFailed, CrmError, Malformed, Permanent, RateLimited, Retryable
from crmsync.model import Contact

FIXTURES = json.loads((Path(__file__).parent / "fixtures" / "hubspot.json").read_text())
KEY = "crmsync_id"


def answer(name: str) -> tuple[int, Headers, Any]:
    f = FIXTURES[name]
    raw = f["body"] if isinstance(f["body"], str) else json.dumps(f["body"])
    return f["status"], CIMultiDict(f["headers"]), loads(raw.encode())


def upsert(cid: str, ext: str | None = None, company: str | None = "Acme") -> Op:
    f = Contact(cid, "default", f"{cid}@example.com", "Ada", None, company, "active", 1)
    return Op("update" if ext else "create", cid, f, ext)


def test_batch_results_are_matched_by_crmsync_id_not_by_position() -> None:
    ops = [upsert("c1"), upsert("c2", "512")]
    res = parse_batch_upsert(ops, *answer("batch_upsert_complete"), id_property=KEY)
    c1, c2 = res.results
    assert (c1.contact_id, c1.ok, c1.external_id, c1.created) == ("c1", True, "513", True)
    assert (c2.contact_id, c2.ok, c2.external_id, c2.created) == ("c2", True, "512", False)
    assert res.block_for is None


def test_multi_status_fails_only_the_record_named_by_the_error() -> None:
    ops = [upsert("c1"), upsert("c2")]
    res = parse_batch_upsert(ops, *answer("batch_upsert_multi_status"), id_property=KEY)
    ok, bad = res.results
    assert ok.ok and ok.external_id == "601"
    assert not bad.ok and isinstance(bad.error, Permanent)
    assert bad.error.code == "VALIDATION_ERROR" and "INVALID_EMAIL" in bad.error.message


def test_multi_status_error_without_context() -> None:
    # One record and one anonymous error: they belong together.
    res = parse_batch_upsert(
        [upsert("c1")], *answer("batch_upsert_multi_status_no_context"), id_property=KEY
    )
    assert not res.results[0].ok and isinstance(res.results[0].error, Permanent)
    # Two records and one anonymous error: nobody can tell; the upsert is
    # idempotent, so both are retried rather than guessed.
    two = [upsert("c1"), upsert("c2")]
    res = parse_batch_upsert(two, *answer("batch_upsert_multi_status_no_context"), id_property=KEY)
    assert all(not r.ok and isinstance(r.error, Retryable) for r in res.results)


def test_single_create_and_conflict() -> None:
    res = parse_single(upsert("c1"), *answer("create_created"))
    assert res.results[0].ok and res.results[0].external_id == "512" and res.results[0].created
    err = error_for(*answer("conflict"))
    assert type(err) is Permanent and err.code == "CONFLICT" and err.status == 409
    assert err.message == "Contact already exists. Existing ID: 37765128953"


@pytest.mark.parametrize(
    ("name", "kind", "code"),
    [
        ("validation_error", Permanent, "VALIDATION_ERROR"),
        ("invalid_authentication", AuthFailed, "INVALID_AUTHENTICATION"),
        ("missing_scopes", Permanent, "MISSING_SCOPES"),
        ("object_not_found", Permanent, "OBJECT_NOT_FOUND"),
        ("ten_secondly_rolling", RateLimited, "TEN_SECONDLY_ROLLING"),
        ("daily", RateLimited, "DAILY"),
        ("bad_gateway", Retryable, None),
    ],
)
def test_whole_request_errors(name: str, kind: type, code: str | None) -> None:
    status, headers, body = answer(name)
    with pytest.raises(kind) as caught:
        parse_single(upsert("c1", "512"), status, headers, body)
    err = caught.value
    assert (
        isinstance(err, CrmError)
        and type(err) is kind
        and err.code == code
        and err.status == status
    )
    with pytest.raises(kind):
        parse_batch_upsert([upsert("c1")], status, headers, body, id_property=KEY)


def test_rate_limit_waits() -> None:
    # TEN_SECONDLY_ROLLING without Retry-After: wait out the interval the headers name.
    err = error_for(*answer("ten_secondly_rolling"))
    assert isinstance(err, RateLimited) and err.retry_after == 10.0
    status, headers, body = answer("daily")
    noon = 19_000 * 86_400 + 12 * 3600
    assert quota_block(status, headers, body, now=noon, most=86_400) == 12 * 3600
    assert quota_block(status, headers, body, now=noon) == 3600  # CRMSYNC_MAX_BLOCK_SECONDS
    err = error_for(status, headers, body)
    assert isinstance(err, RateLimited) and 0 < err.retry_after <= 86_400
    told = CIMultiDict(headers)
    told["Retry-After"] = "7"
    err = error_for(status, told, body)
    assert isinstance(err, RateLimited) and err.retry_after == 7.0
    # The mock's short window is honoured as it is.
    short = CIMultiDict({"X-HubSpot-RateLimit-Interval-Milliseconds": "500"})
    err = error_for(429, short, {"policyName": "TEN_SECONDLY_ROLLING"})
    assert isinstance(err, RateLimited) and err.retry_after == 0.5


def test_daily_quota_spent_on_a_success_blocks_until_reset() -> None:
    status, _, body = answer("create_created")
    spent = CIMultiDict({"X-HubSpot-RateLimit-Daily-Remaining": "0"})
    block = parse_single(upsert("c1"), status, spent, body).block_for
    assert block is not None and 0 < block <= 86_400
    # With room left in the rolling window there is nothing to wait for.
    room = CIMultiDict(
        {"X-HubSpot-RateLimit-Remaining": "3", "X-HubSpot-RateLimit-Interval-Milliseconds": "1000"}
    )
    assert parse_single(upsert("c1"), status, room, body).block_for is None


def test_deletes() -> None:
    op = Op("delete", "c1", None, "512")
    assert parse_delete(op, 204, CIMultiDict(), None).results[0].ok
    assert parse_delete(op, *answer("object_not_found")).results[0].ok  # already gone
    with pytest.raises(AuthFailed):
        parse_delete(op, *answer("invalid_authentication"))
    ops = [op, Op("delete", "c2", None, "513")]
    assert all(r.ok for r in parse_archive(ops, 204, CIMultiDict(), None).results)
    with pytest.raises(RateLimited):
        parse_archive(ops, *answer("ten_secondly_rolling"))


def test_properties_follow_the_field_map_and_carry_crmsync_id() -> None:
    session = cast(aiohttp.ClientSession, object())  # never used: no request is sent
    settings = {"field_map": {"status": "lifecyclestage"}}
    a = make_adapter(
        "hubspot",
        base_url="https://api.hubapi.com",
        token="pat",
        settings=settings,
        session=session,
    )
    assert isinstance(a, HubSpotAdapter)
    props = a._properties(upsert("c7", company=None))
    assert props == {
        "email": "c7@example.com",
        "firstname": "Ada",
        "lastname": "",  # HubSpot clears with "", not null
        "company": "",
        "lifecyclestage": "active",
        "crmsync_id": "c7",
    }
    assert a.contacts == "https://api.hubapi.com/crm/v3/objects/contacts"


def test_results_without_crmsync_id_fall_back_to_email_then_are_not_confirmed() -> None:
    status, headers, body = answer("batch_upsert_complete")
    for r in body["results"]:
        del r["properties"]["crmsync_id"]
    ops = [
        Op("create", cid, Contact(cid, "default", email, None, None, None, "lead", 1), None)
        for cid, email in (("x1", "Ada@example.com"), ("x2", "grace@example.com"))
    ]
    res = parse_batch_upsert(ops, status, headers, body, id_property=KEY)
    assert [(r.contact_id, r.ok, r.external_id) for r in res.results] == [
        ("x1", True, "513"),
        ("x2", True, "512"),
    ]
    for r in body["results"]:
        del r["properties"]["email"]
    res = parse_batch_upsert(ops, status, headers, body, id_property=KEY)
    # Which result is whose is unknown: nothing is confirmed, and nothing guessed
    # (the upsert by crmsync_id is idempotent: the retry finds the records).
    assert all(not r.ok and isinstance(r.error, Malformed) for r in res.results)
