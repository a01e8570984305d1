"""500 contacts through the HTTP API to 2 Salesforce and 2 HubSpot connections
(single-record mode), whole processes, product defaults, no proxy in between.

A second wave edits ~20% and deletes ~10% of them. The CRM state of every
contact must be what the sync rules say, with 0 duplicates and 0 rate-limit
violations by the mock's own count; the achieved request rate is printed.
"""

from __future__ import annotations

import time
from dataclasses import replace

from helpers import assert_final, settle

from crmsync_lab.harness.cluster import Cluster, ClusterConfig
from crmsync_lab.harness.contacts import generate, plan_changes


async def test_500_contacts_to_two_salesforce_and_two_hubspot(
    cluster_config: ClusterConfig,
) -> None:
    # The demo's accounts: sf-01, sf-02 at 100/s; hs-01, hs-02 at 50/s.
    config = replace(cluster_config, batch_size=1, mock_scenario="demo")
    async with Cluster(config) as cluster:
        assert sorted(c.crm for c in cluster.connections) == ["hubspot"] * 2 + ["salesforce"] * 2
        people = generate(500, seed=42)
        t0 = time.monotonic()
        await cluster.put_contacts(people)
        await settle(cluster, 120)
        updated, deleted = plan_changes(people)
        await cluster.update(updated)
        await cluster.delete(deleted)
        await settle(cluster, 120)
        elapsed = time.monotonic() - t0
        stats = await cluster.mock_stats()
        requests = int(stats["totals"]["requests"])
        print(
            f"\nload: {len(people)} contacts + {len(updated)} updates + {len(deleted)} deletes"
            f" -> {requests} CRM requests in {elapsed:.1f}s = {requests / elapsed:.0f} req/s"
            f" (limits: 2 x 100/s + 2 x 50/s = 300/s)"
        )
        for key, acct in sorted(stats["accounts"].items()):
            print(
                f"  {key}: {acct['requests']} requests, max {acct['max_in_any_1s']} in any 1 s"
                f" (limit {acct['limit']}), {acct['violations']} violations,"
                f" {acct['records']} records, {acct['duplicates']} duplicates"
            )
        await assert_final(cluster)
        # Every connection did real work of every kind, within its limit.
        for c in cluster.connections:
            acct = stats["accounts"][f"{c.crm}/{c.account}"]
            assert acct["created"] > 0 and acct["updated"] > 0 and acct["deleted"] > 0, acct
            assert acct["max_in_any_1s"] <= acct["limit"], acct
