"""The CRMs' limit models over HTTP: the real refusals and headers, the account
clock moved by the control API, the concurrency cap, seeding and token control."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import aiohttp

from crmsync_lab.mock.config import AccountSpec, OAuthSpec
from crmsync_lab.mock.server import MockHandle
from support import StartMock
from support import call_json as call

SF = "/services/data/v60.0"
HS = "/crm/v3/objects/contacts"


async def control(http: aiohttp.ClientSession, mock: MockHandle, path: str, body: Any) -> Any:
    async with http.post(f"{mock.url}/_control/{path}", json=body) as r:
        return r.status, await r.json()


async def test_salesforce_daily_allocation_refuses_exactly_at_max(
    start_mock_crm: StartMock, http: aiohttp.ClientSession
) -> None:
    mock = await start_mock_crm(AccountSpec("salesforce", "org", model="crm", daily_limit=3))
    url = f"{mock.base_url('salesforce', 'org')}{SF}/sobjects/Contact/CrmSync_Id__c/c1"
    seen = []
    for _ in range(4):
        status, body, headers = await call(http, "PATCH", url, "token-org", {"LastName": "L"})
        seen.append((status, headers["Sforce-Limit-Info"]))
    assert seen == [
        (201, "api-usage=1/3"),
        (200, "api-usage=2/3"),
        (200, "api-usage=3/3"),
        (403, "api-usage=3/3"),
    ]
    assert body == [
        {
            "message": "TotalRequests Limit exceeded.",
            "errorCode": "REQUEST_LIMIT_EXCEEDED",
            "fields": [],
        }
    ]
    assert "Retry-After" not in headers  # Salesforce says nothing about when
    # /limits answers even now, and costs nothing.
    status, limits, _ = await call(
        http, "GET", f"{mock.base_url('sf', 'org')}{SF}/limits/", "token-org"
    )
    assert status == 200 and limits["DailyApiRequests"] == {"Max": 3, "Remaining": 0}
    stats = mock.account_stats("salesforce", "org")
    assert stats["violations_by"] == {"DAILY": 1} and stats["daily"] == {"used": 3, "max": 3}
    # A day later (the account's clock moved by the control API) the allocation is back.
    status, clocks = await control(
        http, mock, "clock", {"account": "org", "advance_seconds": 86_400}
    )
    assert status == 200 and clocks["salesforce/org"]["speed"] == 1.0
    assert (await call(http, "PATCH", url, "token-org", {"LastName": "L"}))[0] == 200


async def test_salesforce_concurrency_cap(
    start_mock_crm: StartMock, http: aiohttp.ClientSession
) -> None:
    spec = AccountSpec("salesforce", "busy", model="crm", concurrency=2, long_running_ms=200)
    mock = await start_mock_crm(spec)
    mock.set_faults("busy", slow_ms=1500)  # every request runs 1.5 s
    url = f"{mock.base_url('salesforce', 'busy')}{SF}/sobjects/Contact"
    long = [
        asyncio.create_task(call(http, "POST", url, "token-busy", {"LastName": f"L{i}"}))
        for i in range(2)
    ]
    await asyncio.sleep(0.5)  # both have run 200 ms: the cap of 2 is reached
    status, body, _ = await call(http, "POST", url, "token-busy", {"LastName": "X"})
    assert status == 403 and body[0]["errorCode"] == "REQUEST_LIMIT_EXCEEDED"
    assert body[0]["message"] == "ConcurrentRequests (Concurrent API Requests) Limit exceeded."
    assert [r[0] for r in await asyncio.gather(*long)] == [201, 201]
    assert (await call(http, "POST", url, "token-busy", {"LastName": "Y"}))[0] == 201
    assert mock.account_stats("salesforce", "busy")["violations_by"] == {"CONCURRENT": 1}


async def test_hubspot_ten_second_window_search_rate_and_headers(
    start_mock_crm: StartMock, http: aiohttp.ClientSession
) -> None:
    mock = await start_mock_crm(AccountSpec("hubspot", "p", model="crm", tier="100"))
    base = mock.base_url("hubspot", "p")
    answers = await asyncio.gather(
        *(call(http, "GET", f"{base}{HS}/1", "token-p") for _ in range(101))
    )
    codes = sorted(a[0] for a in answers)
    assert codes == [404] * 100 + [429]  # authenticated and admitted, no such contact
    limited = next(a for a in answers if a[0] == 429)
    assert limited[1]["policyName"] == "TEN_SECONDLY_ROLLING"
    assert limited[1]["errorType"] == "RATE_LIMIT"
    headers = limited[2]
    assert headers["X-HubSpot-RateLimit-Max"] == "100"
    assert headers["X-HubSpot-RateLimit-Remaining"] == "0"
    assert headers["X-HubSpot-RateLimit-Interval-Milliseconds"] == "10000"
    assert headers["X-HubSpot-RateLimit-Daily"] == "250000"
    assert headers["X-HubSpot-RateLimit-Daily-Remaining"] == str(250_000 - 100)
    # Search has its own 5 per second (and the 10-second window is spent anyway for others).
    search = {"filterGroups": [], "limit": 1}
    got = await asyncio.gather(
        *(call(http, "POST", f"{base}{HS}/search", "token-p", search) for _ in range(6))
    )
    assert sorted(a[0] for a in got) == [200] * 5 + [429]
    assert next(a for a in got if a[0] == 429)[1]["policyName"] == "SECONDLY"


async def test_hubspot_daily_limit_resets_at_the_portals_midnight(
    start_mock_crm: StartMock, http: aiohttp.ClientSession
) -> None:
    spec = AccountSpec("hubspot", "ny", model="crm", daily_limit=2, time_zone="America/New_York")
    mock = await start_mock_crm(spec)
    # 10 s before the next midnight in New York (the clock only moves forward).
    tomorrow = datetime.now(ZoneInfo("America/New_York")) + timedelta(days=1, minutes=1)
    eve = tomorrow.replace(hour=0, minute=0, second=0, microsecond=0).timestamp() - 10
    status, _ = await control(http, mock, "clock", {"account": "ny", "crm": "hs", "wall": eve})
    assert status == 200
    url = f"{mock.base_url('hubspot', 'ny')}{HS}/1"
    codes = [(await call(http, "GET", url, "token-ny"))[0] for _ in range(3)]
    assert codes == [404, 404, 429]
    status, body, headers = await call(http, "GET", url, "token-ny")
    assert body["policyName"] == "DAILY" and headers["X-HubSpot-RateLimit-Daily-Remaining"] == "0"
    await control(http, mock, "clock", {"account": "ny", "advance_seconds": 15})  # 00:00:05
    status, _, headers = await call(http, "GET", url, "token-ny")
    assert status == 404 and headers["X-HubSpot-RateLimit-Daily-Remaining"] == "1"
    # The clock only moves forward.
    status, answer = await control(http, mock, "clock", {"account": "ny", "wall": eve - 60})
    assert status == 400 and "never goes back" in answer["error"]


async def test_windows_model_keeps_retry_after_and_crm_model_accounts_via_control(
    start_mock_crm: StartMock, http: aiohttp.ClientSession
) -> None:
    mock = await start_mock_crm()
    spec = {"crm": "hubspot", "account": "t", "model": "crm", "tier": "enterprise", "oauth": True}
    status, view = await control(http, mock, "accounts", spec)
    assert status == 201 and view["model"] == "hubspot" and view["tier"] == 190
    assert view["limits"] == [
        {"limit": 190, "window_ms": 10_000},
        {"limit": 1_000_000, "window_ms": 86_400_000},
    ]
    assert view["oauth"]["client_id"] == "client-t" and view["oauth"]["token_lifetime"] == 1800
    bad = [
        ({"crm": "hubspot", "account": "x", "model": "fast"}, "model must be one of"),
        ({"crm": "hubspot", "account": "x", "model": "crm", "tier": "gold"}, "tier 'gold'"),
        ({"crm": "hubspot", "account": "x", "time_zone": "Mars/Base"}, "time_zone 'Mars/Base'"),
        ({"crm": "hubspot", "account": "x", "static_token": "no"}, "static_token must be"),
        ({"crm": "hubspot", "account": "x", "static_token": False}, "needs oauth"),
        ({"crm": "hubspot", "account": "x", "id_field": "not-external-id"}, "Salesforce only"),
        ({"crm": "salesforce", "account": "x", "oauth": {"certificate": "x"}}, "not a PEM"),
    ]
    for body, words in bad:
        status, answer = await control(http, mock, "accounts", body)
        assert status == 400 and words in answer["error"], (body, answer)
    status, answer = await control(http, mock, "tokens", {"account": "nobody", "revoke": "all"})
    assert status == 404


async def test_seeding_and_token_control(
    start_mock_crm: StartMock, http: aiohttp.ClientSession
) -> None:
    mock = await start_mock_crm(
        AccountSpec("hubspot", "h", oauth=OAuthSpec.default("hubspot", "h")),
        AccountSpec("salesforce", "s"),
    )
    rows = [
        {"id": "c1", "email": "a@x.io", "first_name": "A", "company": "Acme", "status": "active"},
        {"email": "b@x.io", "last_name": "Bee"},
        {"email": "a@x.io"},  # HubSpot refuses a second contact with one email
    ]
    status, seeded = await control(http, mock, "seed", {"account": "*", "contacts": rows})
    assert status == 200
    assert seeded["hubspot/h"]["created"] == 2 and seeded["hubspot/h"]["refused"] == [
        {
            "index": 2,
            "reason": f"Contact already exists. Existing ID: {seeded['hubspot/h']['ids'][0]}",
        }
    ]
    assert seeded["salesforce/s"]["created"] == 3  # its duplicate rule allows them
    hs = {r["properties"]["email"]: r["properties"] for r in mock.records("hubspot", "h")}
    assert hs["a@x.io"] == {"email": "a@x.io", "firstname": "A", "company": "Acme"}  # no crmsync_id
    sf = mock.records("salesforce", "s")
    assert {r["LastName"] for r in sf} == {"A", "Bee"} and all("CrmSync_Id__c" not in r for r in sf)
    stats = mock.account_stats("hubspot", "h")
    assert stats["requests"] == 0 and stats["created"] == 0 and stats["records"] == 2
    # The 409 an adopting client sees names the seeded record.
    status, body, _ = await call(
        http,
        "POST",
        f"{mock.base_url('hs', 'h')}{HS}",
        "token-h",
        {"properties": {"email": "A@x.io"}},
    )
    first = seeded["hubspot/h"]["ids"][0]
    assert status == 409 and body["message"] == f"Contact already exists. Existing ID: {first}"
    # Token control: a short lifetime, a revoked refresh token, a new one.
    status, view = await control(http, mock, "tokens", {"account": "h", "token_lifetime": 5})
    assert status == 200 and view["hubspot/h"]["token_lifetime"] == 5
    form = {
        "grant_type": "refresh_token",
        "client_id": "client-h",
        "client_secret": "secret-h",
        "refresh_token": "refresh-h",
    }
    async with http.post(f"{mock.url}/oauth/v1/token", data=form) as r:
        assert r.status == 200 and (await r.json())["expires_in"] == 5
    await control(http, mock, "tokens", {"account": "h", "revoke": "all"})
    async with http.post(f"{mock.url}/oauth/v1/token", data=form) as r:
        assert r.status == 400 and (await r.json())["status"] == "BAD_REFRESH_TOKEN"
    await control(http, mock, "tokens", {"account": "h", "refresh_token": "refresh-2"})
    async with http.post(
        f"{mock.url}/oauth/v1/token", data={**form, "refresh_token": "refresh-2"}
    ) as r:
        assert r.status == 200
    status, answer = await control(http, mock, "tokens", {"account": "s", "refresh_token": "x"})
    assert status == 400 and "no OAuth app" in answer["error"]


async def test_other_apps_usage_counts_in_the_daily_budget(
    start_mock_crm: StartMock, http: aiohttp.ClientSession
) -> None:
    """``POST /_control/usage``: other apps spend requests of the day: the headers
    tell it, the budget refuses accordingly, and none of it is a violation."""
    mock = await start_mock_crm(
        AccountSpec("salesforce", "org", model="crm", daily_limit=5),
        AccountSpec("hubspot", "portal", model="crm", daily_limit=5),
    )
    assert await control(http, mock, "usage", {"account": "org", "requests": 4}) == (
        200,
        {"salesforce/org": {"used": 4, "max": 5}},
    )
    assert (await control(http, mock, "usage", {"account": "org", "requests": -1}))[0] == 400
    sf = f"{mock.base_url('salesforce', 'org')}{SF}/sobjects/Contact/CrmSync_Id__c/c1"
    first = await call(http, "PATCH", sf, "token-org", {"LastName": "L"})
    second = await call(http, "PATCH", sf, "token-org", {"LastName": "L"})
    assert (first[0], first[2]["Sforce-Limit-Info"]) == (201, "api-usage=5/5")
    assert second[0] == 403
    await control(http, mock, "usage", {"account": "portal", "requests": 5})
    hs = f"{mock.base_url('hubspot', 'portal')}{HS}"
    status, body, headers = await call(http, "POST", hs, "token-portal", {"properties": {}})
    assert status == 429 and body["policyName"] == "DAILY"
    assert headers["X-HubSpot-RateLimit-Daily-Remaining"] == "0"
    async with http.get(f"{mock.url}/_control/stats") as r:
        stats = (await r.json())["accounts"]
    assert stats["salesforce/org"]["violations"] == 1  # ours, not the other apps'
    assert stats["hubspot/portal"]["violations"] == 1
