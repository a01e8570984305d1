"""What the CRMs' answers say about their quotas (each adapter's ``quota_block``)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from crmsync.crm import hubspot, salesforce
from crmsync.crm.quota import bounded

QUOTA = {"hubspot": hubspot.quota_block, "salesforce": salesforce.quota_block}

NOW = datetime(2024, 5, 1, 23, 0, 0, tzinfo=UTC).timestamp()
HEADER_CASES = [
    ("429 Retry-After seconds", "hubspot", 429, {"Retry-After": "3"}, None, 3.0),
    (
        "429 Retry-After HTTP date",
        "salesforce",
        429,
        {"Retry-After": "Wed, 01 May 2024 23:00:07 GMT"},
        None,
        7.0,
    ),
    (
        "HubSpot 10-second 429 without Retry-After waits the interval",
        "hubspot",
        429,
        {
            "X-HubSpot-RateLimit-Interval-Milliseconds": "10000",
            "X-HubSpot-RateLimit-Remaining": "0",
        },
        {"errorType": "RATE_LIMIT", "policyName": "TEN_SECONDLY_ROLLING"},
        10.0,
    ),
    (
        "HubSpot daily 429 waits until midnight UTC",
        "hubspot",
        429,
        {},
        {"errorType": "RATE_LIMIT", "policyName": "DAILY"},
        3600.0,
    ),
    (
        "HubSpot daily quota used up on a success",
        "hubspot",
        200,
        {"x-hubspot-ratelimit-daily-remaining": "0"},
        None,
        3600.0,
    ),
    (
        "HubSpot window full on a success: one request's share of the interval",
        "hubspot",
        200,
        {
            "X-HubSpot-RateLimit-Remaining": "0",
            "X-HubSpot-RateLimit-Interval-Milliseconds": "10000",
            "X-HubSpot-RateLimit-Max": "100",
        },
        None,
        0.1,
    ),
    (
        "HubSpot with room left",
        "hubspot",
        200,
        {
            "X-HubSpot-RateLimit-Remaining": "7",
            "X-HubSpot-RateLimit-Interval-Milliseconds": "10000",
        },
        None,
        None,
    ),
    (
        "Salesforce 403 REQUEST_LIMIT_EXCEEDED without header",
        "salesforce",
        403,
        {},
        [{"errorCode": "REQUEST_LIMIT_EXCEEDED", "message": "TotalRequests Limit exceeded."}],
        1.0,
    ),
    (
        "Salesforce org quota used up",
        "salesforce",
        200,
        {"Sforce-Limit-Info": "api-usage=15000/15000"},
        None,
        300.0,
    ),
    (
        "Salesforce quota with room",
        "salesforce",
        200,
        {"Sforce-Limit-Info": "api-usage=25/5000; per-app-api-usage=17/250(appName=x)"},
        None,
        None,
    ),
    ("Salesforce other 403", "salesforce", 403, {}, [{"errorCode": "INSUFFICIENT_ACCESS"}], None),
    ("plain 500", "hubspot", 500, {"Retry-After": "5"}, None, None),
]


@pytest.mark.parametrize(
    ("name", "crm", "status", "headers", "body", "expected"),
    HEADER_CASES,
    ids=[c[0] for c in HEADER_CASES],
)
def test_quota_block(
    name: str,
    crm: str,
    status: int,
    headers: dict[str, str],
    body: object,
    expected: float | None,
) -> None:
    got = QUOTA[crm](status, headers, body, now=NOW)
    assert got == (pytest.approx(expected) if expected is not None else None)


# Absurd waits from outside, the same rule for both CRMs: at most
# CRMSYNC_MAX_BLOCK_SECONDS; at least the CRM's window when the hint is no wait.
HUBSPOT_WINDOW = {"X-HubSpot-RateLimit-Interval-Milliseconds": "10000"}
ABSURD = [
    ("huge", "1000000000", 3600.0, 3600.0),
    ("inf", "inf", 10.0, 1.0),
    ("-inf", "-inf", 10.0, 1.0),
    ("NaN", "nan", 10.0, 1.0),
    ("zero", "0", 10.0, 1.0),
    ("negative", "-5", 10.0, 1.0),
    ("garbage", "soon, promise", 10.0, 1.0),
    ("a date long past", "Wed, 01 May 1980 00:00:00 GMT", 10.0, 1.0),
    ("a date far ahead", "Fri, 01 May 2099 00:00:00 GMT", 3600.0, 3600.0),
    ("a broken date", "Wed, 99 Foo 2024 99:99:99 GMT", 10.0, 1.0),
    ("an overflowing number", "1e400", 10.0, 1.0),
    ("sane", "7", 7.0, 7.0),
]


@pytest.mark.parametrize(
    ("retry_after", "hubspot_wait", "salesforce_wait"),
    [pytest.param(*case[1:], id=case[0]) for case in ABSURD],
)
def test_absurd_retry_after_is_bounded(
    retry_after: str, hubspot_wait: float, salesforce_wait: float
) -> None:
    hs = hubspot.quota_block(429, {"Retry-After": retry_after, **HUBSPOT_WINDOW}, None, now=NOW)
    sf = salesforce.quota_block(429, {"Retry-After": retry_after}, None, now=NOW)
    assert hs == pytest.approx(hubspot_wait) and sf == pytest.approx(salesforce_wait)
    limited = hubspot.error_for(429, {"Retry-After": retry_after, **HUBSPOT_WINDOW}, None)
    assert limited.retry_after == pytest.approx(hubspot_wait)  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"X-HubSpot-RateLimit-Interval-Milliseconds": "999999999999"}, 3600.0),
        ({"X-HubSpot-RateLimit-Interval-Milliseconds": "-10"}, 1.0),
        ({"X-HubSpot-RateLimit-Interval-Milliseconds": "ten"}, 1.0),
    ],
)
def test_an_absurd_window_header_is_bounded_too(headers: dict[str, str], expected: float) -> None:
    assert hubspot.quota_block(429, headers, None, now=NOW) == pytest.approx(expected)


def test_the_bound_is_a_setting() -> None:
    assert hubspot.quota_block(429, {"Retry-After": "1e9"}, None, now=NOW, most=60) == 60
    assert salesforce.quota_block(429, {"Retry-After": "1e9"}, None, now=NOW, most=60) == 60
    # A window longer than the bound is the bound.
    assert bounded(None, window=86_400, most=600) == 600
    assert bounded(float("nan"), window=float("nan"), most=float("inf")) == 1.0
