"""The CRMs' own limit models: the portal's day (midnight arithmetic, DST), the
settings' meaning, the hold after a refusal, and properties of their models
(tests/oracles/limiter.py) that the claim script follows."""

from __future__ import annotations

from datetime import UTC, datetime
from itertools import pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crmsync import crm_limits, figures
from crmsync.crm import hubspot, salesforce
from crmsync.crm.quota import Usage
from crmsync.crm_limits import CrmSpec, day_bounds, hold_seconds, midnights, spec_of, windows_of
from crmsync.queue.store import QueueDepth
from crmsync.ratelimit import RateWindow
from oracles.limiter import DailyBudget, InFlightCap, RollingBudget, portal_days


def ms(iso: str) -> int:
    return round(datetime.fromisoformat(iso).astimezone(UTC).timestamp() * 1000)


# (zone, a moment, the portal day's start, its end): DST days last 23 or 25 hours;
# Santiago's clocks skip midnight (the day starts at 01:00 local).
MIDNIGHTS = [
    ("UTC", "2026-12-07T12:00:00+00:00", "2026-12-07T00:00:00+00:00", "2026-12-08T00:00:00+00:00"),
    ("UTC", "2026-12-07T00:00:00+00:00", "2026-12-07T00:00:00+00:00", "2026-12-08T00:00:00+00:00"),
    (
        "America/New_York",
        "2026-12-07T03:00:00+00:00",  # 22:00 on the 6th in New York
        "2026-12-06T00:00:00-05:00",
        "2026-12-07T00:00:00-05:00",
    ),
    (
        "America/New_York",
        "2026-03-08T12:00:00-04:00",  # spring forward: a 23-hour day
        "2026-03-08T00:00:00-05:00",
        "2026-03-09T00:00:00-04:00",
    ),
    (
        "America/New_York",
        "2026-11-01T23:59:59-05:00",  # fall back: a 25-hour day
        "2026-11-01T00:00:00-04:00",
        "2026-11-02T00:00:00-05:00",
    ),
    (
        "Europe/Berlin",
        "2026-03-29T01:30:00+01:00",
        "2026-03-29T00:00:00+01:00",
        "2026-03-30T00:00:00+02:00",
    ),
    (
        "Asia/Kolkata",
        "2026-12-07T00:10:00+05:30",
        "2026-12-07T00:00:00+05:30",
        "2026-12-08T00:00:00+05:30",
    ),
    (
        "America/Santiago",
        "2026-09-06T12:00:00-03:00",  # 00:00 -04 jumps to 01:00 -03
        "2026-09-06T01:00:00-03:00",
        "2026-09-07T00:00:00-03:00",
    ),
    (
        "Australia/Lord_Howe",  # a half-hour DST change
        "2026-10-04T12:00:00+11:00",
        "2026-10-04T00:00:00+10:30",
        "2026-10-05T00:00:00+11:00",
    ),
]


@pytest.mark.parametrize(("zone", "at", "start", "end"), MIDNIGHTS)
def test_the_portals_day_runs_from_local_midnight_to_local_midnight(
    zone: str, at: str, start: str, end: str
) -> None:
    assert midnights(ms(at), zone) == (ms(start), ms(end))
    b = day_bounds(ms(at), zone)
    assert b[1:3] == (ms(start), ms(end))
    assert b[0] < b[1] < b[2] < b[3]
    assert midnights(b[0], zone)[1] == b[1] and midnights(b[2], zone) == (b[2], b[3])


ZONES = [
    "UTC",
    "America/New_York",
    "Europe/Berlin",
    "Asia/Kolkata",
    "America/Santiago",
    "Australia/Lord_Howe",
    "Pacific/Chatham",
    "America/St_Johns",
]


@settings(max_examples=300, deadline=None)
@given(
    zone=st.sampled_from(ZONES),
    t=st.integers(ms("2020-01-01T00:00:00+00:00"), ms("2031-01-01T00:00:00+00:00")),
)
def test_midnights_agree_with_the_oracle(zone: str, t: int) -> None:
    start, end = midnights(t, zone)
    assert start <= t < end
    assert (start, end) == portal_days(t, zone)
    assert 22 * 3_600_000 <= end - start <= 26 * 3_600_000


@settings(max_examples=200, deadline=None)
@given(
    zone=st.sampled_from(ZONES),
    t=st.integers(ms("2025-01-01T00:00:00+00:00"), ms("2028-01-01T00:00:00+00:00")),
    day_s=st.sampled_from([1, 20, 60, 3600]),
)
def test_a_compressed_day_is_a_run_of_equal_days(zone: str, t: int, day_s: int) -> None:
    day = day_s * 1000
    b = day_bounds(t, zone, day)
    assert b[1] <= t < b[2]
    assert [y - x for x, y in pairwise(b)] == [day, day, day]
    assert (b[1], b[2]) == portal_days(t, zone, day)


def test_settings_choose_the_model() -> None:
    assert spec_of("salesforce", {}) is None
    assert spec_of("salesforce", {"limit_model": "windows"}) is None
    sf = spec_of("salesforce", {"limit_model": "crm", "daily_limit": 48_000})
    assert sf == CrmSpec("rolling", 48_000, 48_000, 25)
    assert windows_of("salesforce", {"limit_model": "crm", "daily_limit": 48_000}) == (
        RateWindow(2000, 3_600_000),
    )
    hs = {"limit_model": "crm", "tier": "professional", "time_zone": "Europe/Paris"}
    assert spec_of("hubspot", hs) == CrmSpec("daily", 650_000, 190, 0, time_zone="Europe/Paris")
    assert windows_of("hubspot", hs) == (RateWindow(190, 10_000),)
    assert windows_of("hubspot", {"limit_model": "crm"}) == (RateWindow(100, 10_000),)
    compressed = spec_of("hubspot", {"limit_model": "crm", "day_seconds": 60})
    assert compressed is not None and compressed.day_ms == 60_000
    assert compressed.recheck_ms == 208 and compressed.guard_ms == 50


@pytest.mark.parametrize(
    ("spec", "tier"),
    [(100, "starter"), ("190", "professional"), (250, "capacity"), ("Enterprise", "enterprise")],
)
def test_tiers_by_name_or_ten_second_limit(spec: object, tier: str) -> None:
    assert crm_limits.tier(spec) == tier


def test_hold_after_a_refusal_is_the_models() -> None:
    now = ms("2026-12-07T23:00:00+00:00")
    sf = CrmSpec("rolling", 100_000, 100_000, 25)
    total = "REQUEST_LIMIT_EXCEEDED: TotalRequests Limit exceeded."
    conc = "REQUEST_LIMIT_EXCEEDED: ConcurrentRequests (Concurrent API Requests) Limit exceeded."
    # Over the allocation: not 1 s, but until the budget is looked at again (5 min).
    assert hold_seconds(sf, 1.0, total, daily=True, now_ms=now, most=3600) == 300.0
    assert hold_seconds(sf, 1.0, conc, daily=False, now_ms=now, most=3600) == 1.0
    assert hold_seconds(sf, 1.0, total, daily=True, now_ms=now, most=60) == 60.0
    hs = CrmSpec("daily", 250_000, 100, time_zone="America/New_York")
    # 18:00 in New York: the portal's day ends in 6 hours (plus the guard), not at UTC midnight.
    daily = "DAILY: You have reached your daily limit."
    held = hold_seconds(hs, 3600.0, daily, daily=False, now_ms=now, most=86_400)
    assert held == 6 * 3600 + hs.guard_ms / 1000
    assert hold_seconds(hs, 0.5, "TEN_SECONDLY_ROLLING: x", daily=False, now_ms=now, most=60) == 0.5


# -- the models' properties ---------------------------------------------------------

steps = st.lists(
    st.tuples(st.sampled_from(["ours", "others", "answer", "time"]), st.integers(1, 40)),
    min_size=1,
    max_size=150,
)


@settings(max_examples=200, deadline=None)
@given(
    limit=st.integers(5, 300),
    reserve=st.sampled_from([0.0, 0.04]),
    zone=st.sampled_from(ZONES),
    plan=steps,
)
def test_no_portal_day_holds_more_than_its_limit(
    limit: int, reserve: float, zone: str, plan: list[tuple[str, int]]
) -> None:
    """We never send into a portal day whose count (other apps' use, once an answer
    has told it, and ours) would pass the limit; whatever the answers' order."""
    day = 60_000
    model = DailyBudget(limit, reserve, zone, day)
    now = ms("2026-11-01T03:00:00+00:00")
    count: dict[int, int] = {}  # portal day -> requests the CRM counted (all apps)
    snaps: list[tuple[int, int]] = []  # (used, our seq) as answers carry them
    untold = False
    for kind, n in plan:
        d = portal_days(now, zone, day)[0]
        if kind == "time":
            now += n * 997
        elif kind == "others":
            count[d] = count.get(d, 0) + n
            untold = True
        elif kind == "answer":
            snaps.append((count.get(d, 0), model.seq))
            for used, ref in snaps[-3:]:  # answers arrive in any order
                model.learn(used, ref, now)
            untold = False
        elif not untold:
            got = model.admit(n, now)
            count[d] = count.get(d, 0) + got
            assert got == 0 or count[d] <= limit, (d, count[d])


@settings(max_examples=200, deadline=None)
@given(allocation=st.integers(5, 500), plan=steps)
def test_a_rolling_budget_learnt_from_answers_is_never_passed(
    allocation: int, plan: list[tuple[str, int]]
) -> None:
    """We never send into a rolling day whose count (every app's) would pass the
    allocation, when the other apps' use was told by an answer before we send (the
    day rolls: requests older than a day leave the count)."""
    model = RollingBudget(allocation, 0.0)
    day = 100
    now = 0
    log: list[int] = []  # times of every request the CRM counts
    untold = False
    for kind, n in plan:
        live = [t for t in log if t > now - day]
        if kind == "time":
            now += n
        elif kind == "others":
            log += [now] * n
            untold = True
        elif kind == "answer":
            model.learn(len(live), model.seq)
            untold = False
        elif not untold:
            got = model.admit(n)
            log += [now] * got
            assert got == 0 or len([t for t in log if t > now - day]) <= allocation


@settings(max_examples=200, deadline=None)
@given(
    cap=st.integers(1, 25),
    plan=st.lists(st.tuples(st.booleans(), st.integers(1, 64)), min_size=1, max_size=100),
)
def test_the_in_flight_cap_holds(cap: int, plan: list[tuple[bool, int]]) -> None:
    model = InFlightCap(cap)
    for i, (claim, n) in enumerate(plan):
        if claim:
            model.admit(f"t{i}", n)
        elif model.claims:
            model.done(sorted(model.claims)[n % len(model.claims)])
        assert sum(model.claims.values()) <= cap


# -- what answers say of the budget, and what status shows -------------------------

DAILY, DAILY_LEFT = "X-HubSpot-RateLimit-Daily", "X-HubSpot-RateLimit-Daily-Remaining"
USAGE = [
    ("salesforce", {"Sforce-Limit-Info": "api-usage=120/15000"}, Usage(120, 15000)),
    ("salesforce", {"sforce-limit-info": "api-usage=7/9, per-app-api-usage=1/5"}, Usage(7, 9)),
    ("salesforce", {"Sforce-Limit-Info": "api-usage=abc/9"}, None),
    ("salesforce", {}, None),
    (
        "hubspot",
        {
            "X-HubSpot-RateLimit-Daily": "250000",
            "X-HubSpot-RateLimit-Daily-Remaining": "249000",
            "X-HubSpot-RateLimit-Max": "190",
            "X-HubSpot-RateLimit-Interval-Milliseconds": "10000",
        },
        Usage(1000, 250000, 190),
    ),
    (
        "hubspot",
        {"X-HubSpot-RateLimit-Max": "5", "X-HubSpot-RateLimit-Interval-Milliseconds": "1000"},
        None,  # the search API's per-second limit says nothing of the tier
    ),
    (
        "hubspot",
        {"X-HubSpot-RateLimit-Daily": "0", "X-HubSpot-RateLimit-Daily-Remaining": "0"},
        None,
    ),
    (
        "hubspot",
        {"X-HubSpot-RateLimit-Daily": "10", "X-HubSpot-RateLimit-Daily-Remaining": "-1"},
        None,
    ),
]


@pytest.mark.parametrize(("crm", "headers", "usage"), USAGE)
def test_answers_headers_tell_the_budget(
    crm: str, headers: dict[str, str], usage: Usage | None
) -> None:
    read = salesforce.usage_of if crm == "salesforce" else hubspot.usage_of
    assert read(headers) == usage


@pytest.mark.parametrize(
    ("status", "body", "usage"),
    [
        (200, {"DailyApiRequests": {"Max": 15000, "Remaining": 14000}}, Usage(1000, 15000)),
        (200, {"DailyApiRequests": {"Max": 15000, "Remaining": 16000}}, Usage(0, 15000)),
        (200, {"DailyApiRequests": {"Max": "15000", "Remaining": 1}}, None),
        (200, {"DailyApiRequests": {"Max": True, "Remaining": 1}}, None),
        (404, [{"errorCode": "NOT_FOUND"}], None),
        (200, [], None),
    ],
)
def test_limits_resource_tells_the_budget(status: int, body: object, usage: Usage | None) -> None:
    assert salesforce.limits_usage(status, body) == usage


def depth(state: dict[str, str]) -> QueueDepth:
    return QueueDepth("c", 0, 0, 0, 0, None, None, None, "closed", 0, None, [], {}, 0, state=state)


@pytest.mark.parametrize(
    ("state", "budget"),
    [
        ({}, None),
        ({"crm": "rolling:100000"}, (0, 100000)),  # nothing learnt yet
        (
            {
                "crm": "rolling:100000",
                "bud_max": "5000",
                "bud_used": "300",
                "bud_ref": "40",
                "bud_seq": "52",
            },
            (312, 5000),
        ),
        ({"crm": "daily:250000", "day_n": "20", "day_others": "400"}, (420, 250000)),
    ],
)
def test_status_shows_the_daily_budget(
    state: dict[str, str], budget: tuple[int, int] | None
) -> None:
    d = depth(state)
    assert d.budget == budget
    shown = figures.connection_figures(d, None)["limits"]
    if budget is None:
        assert shown == []
    else:
        assert shown == [{"limit": budget[1], "window_ms": 86_400_000, "used": budget[0]}]
