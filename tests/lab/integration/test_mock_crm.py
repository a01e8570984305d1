"""The mock CRMs over HTTP: real formats, strict limits, faults, inspection, CLI."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from crmsync_lab.mock.config import AccountSpec, scenario
from crmsync_lab.mock.limits import AccountLimits, Window
from crmsync_lab.mock.seeding import chosen
from crmsync_lab.mock.server import MockHandle
from support import StartMock
from support import call_json as call

SF = "/services/data/v60.0"
HS = "/crm/v3/objects/contacts"


@pytest.fixture
async def mock(start_mock_crm: StartMock) -> MockHandle:
    return await start_mock_crm(
        AccountSpec("salesforce", "acme", limits=(Window(5, 1000),)),
        AccountSpec("hubspot", "acme", token="secret", limits=(Window(5, 1000),)),
        AccountSpec("salesforce", "free", limits=(Window(0, 1000),)),
        AccountSpec("hubspot", "free", limits=(Window(0, 1000),)),
        # An org whose CrmSync_Id__c is not unique: naive clients can duplicate it.
        AccountSpec("salesforce", "loose", limits=(Window(0, 1000),), id_field="not-unique"),
        seed=1,
    )


def test_sliding_window_is_exact() -> None:
    lim = AccountLimits([Window(3, 1000)])
    for t in (0.0, 0.1, 0.2, 0.3, 0.99, 1.0, 1.05, 1.15):
        lim.arrive(t)
    admitted = [lim.admit(t, 1e9 + t) is None for t in (0.0, 0.1, 0.2, 0.3, 0.99, 1.0, 1.05, 1.15)]
    # 0.3 and 0.99 fall in (t-1, t] with three admissions; 1.0 sees 0.0 leave.
    assert admitted == [True, True, True, False, False, True, False, True]
    assert lim.violations == 3
    assert lim.max_in_any_1s == 6  # arrivals 0.2 .. 1.15 minus those a second older
    daily = AccountLimits([], daily_limit=2)
    assert [daily.admit(0, 10.0) is None for _ in range(3)] == [True, True, False]
    assert daily.admit(0, 86_400.0 + 1) is None  # a new UTC day


async def test_unknown_account_and_bad_token(mock: MockHandle, http: aiohttp.ClientSession) -> None:
    status, body, _ = await call(http, "GET", f"{mock.url}/sf/nobody{SF}/sobjects/Contact/x", "t")
    assert status == 404
    status, body, _ = await call(
        http, "GET", f"{mock.base_url('sf', 'acme')}{SF}/sobjects/Contact/x", "bad"
    )
    assert status == 401 and body == [
        {"message": "Session expired or invalid", "errorCode": "INVALID_SESSION_ID", "fields": []}
    ]
    status, body, _ = await call(http, "GET", f"{mock.base_url('hs', 'acme')}{HS}/1", "token-acme")
    assert status == 401 and body["category"] == "INVALID_AUTHENTICATION"
    status, _, _ = await call(http, "GET", f"{mock.base_url('hs', 'acme')}{HS}/1", "secret")
    assert status == 404


async def test_limits_answer_with_the_real_errors(
    mock: MockHandle, http: aiohttp.ClientSession
) -> None:
    sf = f"{mock.base_url('salesforce', 'acme')}{SF}/sobjects/Contact/CrmSync_Id__c/c1"
    answers = await asyncio.gather(
        *(call(http, "PATCH", sf, "token-acme", {"LastName": "L"}) for _ in range(8))
    )
    codes = sorted(a[0] for a in answers)
    assert codes.count(403) == 3 and set(codes) - {403} <= {200, 201}
    refused = next(a for a in answers if a[0] == 403)
    assert refused[1] == [
        {
            "message": "TotalRequests Limit exceeded.",
            "errorCode": "REQUEST_LIMIT_EXCEEDED",
            "fields": [],
        }
    ]
    assert refused[2]["Retry-After"] == "1"
    assert refused[2]["Sforce-Limit-Info"].startswith("api-usage=5/")
    hs = f"{mock.base_url('hubspot', 'acme')}{HS}"
    answers = await asyncio.gather(
        *(
            call(http, "POST", hs, "secret", {"properties": {"email": f"u{i}@x.io"}})
            for i in range(7)
        )
    )
    limited = [a for a in answers if a[0] == 429]
    assert len(limited) == 2 and sum(a[0] == 201 for a in answers) == 5
    body, headers = limited[0][1], limited[0][2]
    assert body["errorType"] == "RATE_LIMIT" and body["policyName"] == "TEN_SECONDLY_ROLLING"
    assert body["message"] == "You have reached your ten_secondly_rolling limit."
    assert headers["X-HubSpot-RateLimit-Max"] == "5"
    assert headers["X-HubSpot-RateLimit-Remaining"] == "0"
    assert headers["X-HubSpot-RateLimit-Interval-Milliseconds"] == "1000"
    assert int(headers["X-HubSpot-RateLimit-Daily-Remaining"]) > 0
    stats = mock.stats()["accounts"]
    assert stats["salesforce/acme"]["violations"] == 3
    assert stats["salesforce/acme"]["max_in_any_1s"] == 8
    assert stats["hubspot/acme"]["violations"] == 2
    assert stats["hubspot/acme"]["by_status"] == {"201": 5, "429": 2}
    # When each violation happened, on the clock of the stats' "now".
    at = stats["salesforce/acme"]["violations_at"]
    assert len(at) == 3 and all(0 <= mock.stats()["now"] - t < 5 for t in at)


async def test_the_mock_reports_stalls_of_its_own_event_loop(mock: MockHandle) -> None:
    await asyncio.sleep(0.05)
    time.sleep(0.08)  # noqa: ASYNC251 - block the loop, as a busy host would
    await asyncio.sleep(0.05)
    loop = mock.stats()["loop"]
    assert loop["stalls"] >= 1 and loop["max_stall_ms"] >= 60
    end, ms = loop["recent"][-1]
    assert ms >= 60 and 0 <= mock.stats()["now"] - end < 1
    mock.reset()
    assert mock.stats()["loop"]["stalls"] == 0


async def test_batch_sizes_and_uniqueness_are_enforced(
    mock: MockHandle, http: aiohttp.ClientSession
) -> None:
    sf = f"{mock.base_url('salesforce', 'free')}{SF}/composite/sobjects/Contact/CrmSync_Id__c"
    records = [
        {"attributes": {"type": "Contact"}, "CrmSync_Id__c": f"c{i}", "LastName": "L"}
        for i in range(201)
    ]
    status, body, _ = await call(
        http, "PATCH", sf, "token-free", {"allOrNone": False, "records": records}
    )
    assert status == 400 and body[0]["errorCode"] == "EXCEEDED_ID_LIMIT"
    hs = f"{mock.base_url('hubspot', 'free')}{HS}"
    inputs = [{"id": f"c{i}", "idProperty": "crmsync_id", "properties": {}} for i in range(101)]
    status, body, _ = await call(
        http, "POST", f"{hs}/batch/upsert", "token-free", {"inputs": inputs}
    )
    assert status == 400 and body["category"] == "VALIDATION_ERROR"
    status, body, _ = await call(
        http, "POST", hs, "token-free", {"properties": {"email": "a@x.io"}}
    )
    assert status == 201
    status, body, _ = await call(
        http, "POST", hs, "token-free", {"properties": {"email": "A@x.io"}}
    )
    assert status == 409 and body["category"] == "CONFLICT"
    assert body["message"].startswith("Contact already exists. Existing ID: ")
    # Batch results come back in no particular order; errors name their input.
    inputs = [
        {
            "id": f"c{i}",
            "idProperty": "crmsync_id",
            "properties": {"email": "a@x.io" if i == 3 else f"c{i}@x.io"},
        }
        for i in range(20)
    ]
    status, body, _ = await call(
        http, "POST", f"{hs}/batch/upsert", "token-free", {"inputs": inputs}
    )
    assert status == 207 and body["numErrors"] == 1
    assert body["errors"][0]["context"] == {"ids": ["c3"]}
    got = [r["properties"]["crmsync_id"] for r in body["results"]]
    assert sorted(got) == sorted(f"c{i}" for i in range(20) if i != 3) and got != sorted(got)


async def test_duplicates_are_counted(mock: MockHandle, http: aiohttp.ClientSession) -> None:
    # A unique external id refuses a second record with it, as Salesforce does.
    url = f"{mock.base_url('salesforce', 'free')}{SF}/sobjects/Contact"
    body = {"LastName": "L", "Email": "same@x.io", "CrmSync_Id__c": "c1"}
    assert (await call(http, "POST", url, "token-free", body))[0] == 201
    status, answer, _ = await call(http, "POST", url, "token-free", body)
    assert status == 400 and answer[0]["errorCode"] == "DUPLICATE_VALUE"
    # Where it is not unique, a naive client creating with POST (no upsert) makes
    # duplicates; the mock sees them.
    url = f"{mock.base_url('salesforce', 'loose')}{SF}/sobjects/Contact"
    for _ in range(3):
        status, _, _ = await call(http, "POST", url, "token-loose", body)
        assert status == 201
    s = mock.account_stats("salesforce", "loose")
    assert s["records"] == 3 and s["duplicates_by"] == {"external_id": 2, "email": 2}
    assert s["duplicates"] == 4
    # Kept up to date on every write: a delete and an email change count down.
    ids = [r["Id"] for r in mock.records("salesforce", "loose")]
    status, _, _ = await call(http, "DELETE", f"{url}/{ids[0]}", "token-loose")
    assert status == 204
    status, _, _ = await call(
        http,
        "PATCH",
        f"{url}/CrmSync_Id__c/c2",
        "token-loose",
        {"LastName": "L", "Email": "SAME@x.io"},
    )
    assert status == 201  # a new record, sharing the email (case-insensitive)
    s = mock.account_stats("salesforce", "loose")
    assert s["duplicates_by"] == {"external_id": 1, "email": 2}


async def test_faults_through_the_control_endpoint(
    mock: MockHandle, http: aiohttp.ClientSession
) -> None:
    ctl = f"{mock.url}/_control"
    url = f"{mock.base_url('hubspot', 'free')}{HS}"
    body = {"properties": {"email": "x@x.io"}}

    async def fault(**spec: Any) -> None:
        async with http.post(
            f"{ctl}/faults", json={"account": "free", "crm": "hubspot", **spec}
        ) as r:
            assert r.status == 200, await r.text()

    await fault(error_rate=1.0)
    assert (await call(http, "POST", url, "token-free", body))[0] in (500, 503)
    await fault(error_rate=0.0, outage_seconds=0.3)
    assert (await call(http, "POST", url, "token-free", body))[0] == 503
    await asyncio.sleep(0.35)
    await fault(storm_seconds=5)
    status, answer, _ = await call(http, "POST", url, "token-free", body)
    assert status == 429 and answer["policyName"] == "TEN_SECONDLY_ROLLING"
    await fault(storm_seconds=0, revoke_token=True)
    assert (await call(http, "POST", url, "token-free", body))[0] == 401
    await fault(revoke_token=False, slow_ms=150)
    t0 = time.monotonic()
    assert (await call(http, "POST", url, "token-free", body))[0] == 201
    assert time.monotonic() - t0 >= 0.14
    await fault(slow_ms=0, lost_rate=1.0)
    with pytest.raises(aiohttp.ClientError):
        await call(
            http,
            "PATCH",
            f"{url}/x@x.io?idProperty=email",
            "token-free",
            {"properties": {"firstname": "Lost"}},
        )
    async with http.get(f"{ctl}/records/hubspot/free") as r:
        records = await r.json()
    assert [rec["properties"]["firstname"] for rec in records] == ["Lost"]  # applied, unanswered
    async with http.post(f"{ctl}/faults", json={"account": "nobody", "error_rate": 1}) as r:
        assert r.status == 404
    async with http.post(f"{ctl}/faults", json={"account": "free", "error_rate": 2}) as r:
        assert r.status == 400
    async with http.get(f"{ctl}/stats") as r:
        stats = await r.json()
    free = stats["accounts"]["hubspot/free"]
    assert free["lost_responses"] == 1 and free["storm_rejections"] == 1
    assert free["by_status"]["401"] == 1 and free["by_status"]["503"] >= 1
    async with http.post(f"{ctl}/reset", json={}) as r:
        assert r.status == 200
    assert mock.account_stats("hubspot", "free")["requests"] == 0
    assert mock.records("hubspot", "free") == []


async def test_accounts_added_at_run_time(mock: MockHandle, http: aiohttp.ClientSession) -> None:
    spec = {"crm": "hubspot", "account": "new", "token": "tok", "limit": "2/s"}
    async with http.post(f"{mock.url}/_control/accounts", json=spec) as r:
        assert r.status == 201
        view = await r.json()
    assert view["base_url"] == f"{mock.url}/hs/new" and view["limits"] == [
        {"limit": 2, "window_ms": 1000}
    ]
    status, _, _ = await call(http, "GET", f"{view['base_url']}{HS}/1", "tok")
    assert status == 404  # authenticated, no such contact
    async with http.get(f"{mock.url}/_control/accounts") as r:
        assert len(await r.json()) == 6


def test_seed_scenario() -> None:
    specs = scenario("seed")
    sf = [s for s in specs if s.crm == "salesforce"]
    hs = [s for s in specs if s.crm == "hubspot"]
    assert len(sf) == 25 and len(hs) == 25
    assert {s.limits for s in sf} == {(Window(100, 1000),)} and sf[0].name == "sf-01"
    assert {s.limits for s in hs} == {(Window(50, 1000),)} and hs[-1].name == "hs-25"


def test_cli_serves_the_seed_scenario() -> None:
    exe = Path(sys.executable).parent / "crmsync"
    proc = subprocess.Popen(
        [str(exe), "mock-crm", "--port", "0", "--scenario", "seed", "--json"],
        stdout=subprocess.PIPE,
        env={**os.environ, "CRMSYNC_MOCK_LATENCY_MS": "0"},
    )
    try:
        assert proc.stdout is not None
        info = json.loads(proc.stdout.readline())
        assert len(info["accounts"]) == 50
        first = info["accounts"][0]
        assert first["base_url"] == f"{info['url']}/sf/sf-01" and first["token"] == "token-sf-01"
        with urllib.request.urlopen(f"{info['url']}/_control/stats", timeout=5) as r:
            stats = json.loads(r.read())
        assert stats["accounts"]["hubspot/hs-25"]["limit"] == 50
    finally:
        proc.terminate()
        code = proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()
    assert code == 0  # SIGTERM is a clean stop


def test_cli_demo_with_the_crms_models_oauth_and_seeds(tmp_path: Path) -> None:
    seeds = tmp_path / "contacts.csv"
    rows = [f"c{i},p{i}@x.io,P,Person{i},Acme" for i in range(40)]
    seeds.write_text("id,email,first_name,last_name,company\n" + "\n".join(rows) + "\n")
    share = sum(chosen(f"p{i}@x.io", 0.5) for i in range(40))
    assert 0 < share < 40
    exe = Path(sys.executable).parent / "crmsync"
    args = ["--port", "0", "--scenario", "demo", "--json", "--limit-model", "crm"]
    args += ["--token-lifetime", "5", "--no-static-tokens", "--hs-tier", "250"]
    args += ["--seed-contacts", str(seeds), "--seed-share", "0.5", "--day-seconds", "60"]
    proc = subprocess.Popen([str(exe), "mock-crm", *args], stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        info = json.loads(proc.stdout.readline())
        views = {f"{a['crm']}/{a['account']}": a for a in info["accounts"]}
        assert set(views) == {
            "salesforce/sf-01",
            "salesforce/sf-02",
            "hubspot/hs-01",
            "hubspot/hs-02",
        }
        for key, view in views.items():
            assert view["token"] is None and view["oauth"]["token_lifetime"] == 5
            assert view["model"] == key.split("/")[0] and view["day_seconds"] == 60
        assert views["hubspot/hs-01"]["limits"][0] == {"limit": 250, "window_ms": 10_000}
        with urllib.request.urlopen(f"{info['url']}/_control/stats", timeout=5) as r:
            stats = json.loads(r.read())
        assert {s["records"] for s in stats["accounts"].values()} == {share}
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()


@pytest.mark.parametrize(
    ("flags", "words"),
    [
        (["--limit-model", "fast"], "--limit-model must be one of windows, crm"),
        (["--hs-tier", "gold"], "--hs-tier: tier 'gold' is not a HubSpot tier"),
        (["--seed-contacts", "/no/such.csv"], "cannot read seed file /no/such.csv"),
        (["--tls-cert", "/x.pem"], "--tls-cert and --tls-key go together"),
    ],
)
def test_cli_names_a_bad_option(flags: list[str], words: str) -> None:
    exe = Path(sys.executable).parent / "crmsync"
    done = subprocess.run(
        [str(exe), "mock-crm", "--port", "0", *flags],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert done.returncode != 0 and words in done.stderr and "Traceback" not in done.stderr
