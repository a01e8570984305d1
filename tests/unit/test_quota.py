"""What the CRMs' answers say about their quotas (each adapter's ``quota_block``)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from crmsync.crm import hubspot, salesforce

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
