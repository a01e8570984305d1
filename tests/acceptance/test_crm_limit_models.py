"""The CRMs' own limit models end to end: the strict mocks enforce them (crm
model, a compressed day), connections hold them with the settings an operator
would give (limit_model=crm, daily_limit, concurrency, tier, time_zone), two
worker processes share them, and nothing goes over.

- Salesforce: an org's rolling daily allocation, part of it spent by other apps
  (injected into the mock's count, so the Sforce-Limit-Info header tells it), is
  never exceeded and is spread over the day; the concurrency cap holds across
  both workers (every request counts as long-running); other apps spending the
  rest mid-run draws at most the requests already in flight as 403
  REQUEST_LIMIT_EXCEEDED, then the connection waits until the budget frees.
- HubSpot: the 10-second window at each tier, and the daily limit reset at the
  portal's midnight in New York, not UTC.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace

import pytest
from helpers import account_stats, counters, dead_letters

from crmsync_lab.harness import mock_client
from crmsync_lab.harness.cluster import Cluster, ClusterConfig
from crmsync_lab.harness.contacts import generate

pytestmark = pytest.mark.slow


def config(base: ClusterConfig, *mock_args: str) -> ClusterConfig:
    return replace(
        base,
        processes=2,
        mock_scenario="none",
        mock_args=("--limit-model", "crm", *mock_args),
        env={"CRMSYNC_RETRY_BASE_SECONDS": "0.1"},
    )


async def synced(cluster: Cluster, n: int, within: float) -> None:
    people = generate(n, seed=14)
    await cluster.put_contacts(people)
    assert await cluster.wait_synced(within), await cluster.unsettled()
    report = await cluster.verify()
    assert report.ok, report.problems()
    assert await dead_letters(cluster) == []


async def test_salesforce_allocation_shared_with_other_apps_is_never_exceeded(
    cluster_config: ClusterConfig,
) -> None:
    """60 requests per 12-second rolling day, 20 already spent by other apps, three
    requests in flight at most: 90 contacts take three days, 0 refusals."""
    cfg = config(
        cluster_config,
        *("--salesforce", "1", "--hubspot", "0", "--sf-daily", "60", "--day-seconds", "12"),
        *("--sf-concurrency", "3", "--sf-long-running-ms", "1", "--latency-ms", "40"),
    )
    async with Cluster(cfg) as cluster:
        await mock_client.usage(cluster.http, cluster.mock_url, "salesforce", "sf-01", 20)
        t0 = time.monotonic()
        await synced(cluster, 90, within=120)
        took = time.monotonic() - t0
        stats = await account_stats(cluster, "salesforce", "sf-01")
        assert stats["violations"] == 0, stats["violations_by"]
        assert stats["requests"] >= 90
        # 90 of 60 - 20 - reserve, then 57 per day: not sent in one burst but spread.
        assert took > 12.0, took
        seen = await counters(cluster, cluster.connections[0].id)
        assert not seen.get("rate_limited"), seen


async def test_salesforce_request_limit_exceeded_waits_until_the_budget_frees(
    cluster_config: ClusterConfig,
) -> None:
    """Other apps spend the whole allocation mid-run: the requests then in flight
    (at most the cap) are refused, and nothing more is sent until the rolling day
    frees the budget; then everything syncs."""
    cfg = config(
        cluster_config,
        *("--salesforce", "1", "--hubspot", "0", "--sf-daily", "100", "--day-seconds", "10"),
        *("--sf-concurrency", "3", "--sf-long-running-ms", "1", "--latency-ms", "40"),
    )
    async with Cluster(cfg) as cluster:
        people = generate(150, seed=15)
        await cluster.put_contacts(people)
        await asyncio.sleep(2.0)
        await mock_client.usage(cluster.http, cluster.mock_url, "salesforce", "sf-01", 100)
        spent_at = time.monotonic()
        await asyncio.sleep(3.0)
        stats = await account_stats(cluster, "salesforce", "sf-01")
        refused = stats["violations"]
        assert refused <= 3, stats["violations_by"]  # what was in flight, no more
        assert await cluster.wait_synced(90), await cluster.unsettled()
        stats = await account_stats(cluster, "salesforce", "sf-01")
        assert stats["violations"] == refused, stats["violations_by"]
        assert time.monotonic() - spent_at > 5.0  # it waited for the day to roll
        report = await cluster.verify()
        # Every record right; the refusals are those counted above, no more.
        over = [f"sf-01: {refused} request(s) over the rate limit"] if refused else []
        assert report.problems() == over
        assert await dead_letters(cluster) == []


@pytest.mark.parametrize("tier", [100, 190, 250])
async def test_hubspot_ten_second_window_at_each_tier(
    cluster_config: ClusterConfig, tier: int
) -> None:
    cfg = config(cluster_config, "--salesforce", "0", "--hubspot", "1", "--hs-tier", str(tier))
    async with Cluster(cfg) as cluster:
        t0 = time.monotonic()
        await synced(cluster, 2 * tier, within=60)
        stats = await account_stats(cluster, "hubspot", "hs-01")
        assert stats["violations"] == 0, stats["violations_by"]
        assert time.monotonic() - t0 > 10.0  # two windows' worth takes over one window


async def test_hubspot_daily_limit_resets_at_the_portals_midnight(
    cluster_config: ClusterConfig,
) -> None:
    """40 requests a day in New York (an 8-second day): 100 contacts take three
    portal days; the mock's day (its own clock) and crmsync's agree, 0 refusals."""
    cfg = config(
        cluster_config,
        *("--salesforce", "0", "--hubspot", "1", "--hs-tier", "250", "--hs-daily", "40"),
        *("--hs-time-zone", "America/New_York", "--day-seconds", "8"),
    )
    async with Cluster(cfg) as cluster:
        t0 = time.monotonic()
        await synced(cluster, 100, within=90)
        stats = await account_stats(cluster, "hubspot", "hs-01")
        assert stats["violations"] == 0, stats["violations_by"]
        assert time.monotonic() - t0 > 8.0
