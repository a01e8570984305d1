"""OAuth access tokens that expire every few seconds, under load, with several
worker processes (real processes, the mock CRMs as a process, no static tokens):
one token-endpoint call per expiry, no pause, no request with an expired token
beyond each worker's first 401, every record synced; a revoked refresh token
pauses the connection with the endpoint's reason and `connections update` with a
new one resumes it; no secret in any log or command output."""

from __future__ import annotations

import re
from dataclasses import replace
from itertools import pairwise
from pathlib import Path

import pytest
from helpers import account_stats, cli, counters, dead_letters, wait_until

from crmsync_lab.harness import mock_client
from crmsync_lab.harness.cluster import Cluster, ClusterConfig
from crmsync_lab.harness.contacts import generate, plan_changes

pytestmark = pytest.mark.slow

PROCESSES = 3
LIFETIME_S = 3.0
ACCOUNTS = {"sf-01": "salesforce", "hs-01": "hubspot"}
# Access tokens as the mock issues them (Salesforce "<org id>!…", HubSpot "CN…").
ACCESS_TOKEN = re.compile(r"00D\d{12}AAA![A-Za-z0-9_-]{20,}|\bCN[A-Za-z0-9_-]{40,}")


def config(base: ClusterConfig) -> ClusterConfig:
    return replace(
        base,
        processes=PROCESSES,
        mock_scenario="none",
        mock_args=(
            "--salesforce",
            "1",
            "--hubspot",
            "1",
            "--sf-limit",
            "100/s",
            "--hs-limit",
            "50/s",
            "--oauth",
            "--no-static-tokens",
            "--token-lifetime",
            f"{LIFETIME_S:g}",
        ),
        auth="oauth",
        # One request in flight per worker and connection: a worker's first 401 is
        # then its only request with the expired token.
        settings=("max_in_flight=1",),
        env={"CRMSYNC_RETRY_BASE_SECONDS": "0.1", "CRMSYNC_HTTP_TIMEOUT_SECONDS": "5"},
    )


async def test_tokens_expiring_under_load_refresh_once_per_expiry(
    cluster_config: ClusterConfig,
) -> None:
    async with Cluster(config(cluster_config)) as cluster:
        people = generate(700, seed=5)
        await cluster.put_contacts(people)
        assert await cluster.wait_synced(120), await cluster.unsettled()
        report = await cluster.verify()
        assert report.ok, report.problems()
        assert await dead_letters(cluster) == []

        for account, crm in ACCOUNTS.items():
            stats = await account_stats(cluster, crm, account)
            auth = stats["auth"]
            grants = int(auth["refresh_grants"])
            assert grants >= 3, (account, auth)  # the run outlived several tokens
            issued = auth["issued_at"]
            gaps = [b - a for a, b in pairwise(issued)]
            # One grant per expiry, not one per worker: a new token only once the
            # last one expired (Salesforce: its 401) or was about to (HubSpot's
            # expires_in, refreshed ahead by a fifth of its life).
            least = LIFETIME_S if crm == "salesforce" else LIFETIME_S * 0.6
            assert min(gaps) >= least - 0.05, (account, gaps)
            # Each worker sent at most one request with each expired token.
            assert int(auth.get("expired_rejections", 0)) <= PROCESSES * (grants - 1), auth
            seen = await counters(cluster, account)
            assert seen.get("token_refreshes") == grants, (account, seen)
            assert not seen.get("auth_pauses"), seen
        status = await cluster.status()
        assert not [c["id"] for c in status["connections"] if c["paused"]]
        async with cluster.http.get(f"{cluster.api_url}/metrics") as r:
            metrics = await r.text()
        for account in ACCOUNTS:
            seen = await counters(cluster, account)
            name = "crmsync_connection_token_refreshes_total"
            sample = re.search(rf'{name}\{{connection="{account}"[^}}]*\}} (\S+)', metrics)
            assert sample is not None and float(sample.group(1)) == seen["token_refreshes"]

        await _revoked_refresh_token_pauses_and_update_resumes(cluster)
        accounts = await mock_client.accounts(cluster.http, cluster.mock_url)
        _no_secret_anywhere(cluster.run_dir, accounts)


async def _revoked_refresh_token_pauses_and_update_resumes(cluster: Cluster) -> None:
    await mock_client.tokens(cluster.http, cluster.mock_url, {"account": "hs-01", "revoke": "all"})
    updated, _ = plan_changes(generate(700, seed=5), seed=9, delete_share=0.0)
    await cluster.update(updated)

    async def paused() -> bool:
        status = await cluster.status()
        return any(c["id"] == "hs-01" and c["paused"] for c in status["connections"])

    await wait_until(paused, 60, "hs-01 paused", cluster=cluster)
    status = await cluster.status()
    (hs,) = [c for c in status["connections"] if c["id"] == "hs-01"]
    assert hs["paused_reason"] == (
        "CRM rejected the token (token endpoint: 400 BAD_REFRESH_TOKEN): "
        "missing or unknown refresh token"
    )
    (sf,) = [c for c in status["connections"] if c["id"] == "sf-01"]
    assert not sf["paused"]

    new = "refresh-hs-01-reauthorized"
    install = {"account": "hs-01", "refresh_token": new}
    await mock_client.tokens(cluster.http, cluster.mock_url, install)
    out = await cli(cluster, "connections", "update", "hs-01", "--refresh-token", new)
    assert "✓ authentication: OAuth refresh-token flow: access token obtained" in out, out
    assert "resumed (it was paused for its credentials)" in out, out
    (cluster.run_dir / "cli-update.log").write_text(out)
    assert await cluster.wait_synced(120), await cluster.unsettled()
    report = await cluster.verify()
    assert report.ok, report.problems()
    assert await dead_letters(cluster) == []


def _no_secret_anywhere(run_dir: Path, accounts: list[dict[str, object]]) -> None:
    secrets = {"refresh-hs-01-reauthorized"}
    for a in accounts:
        app = a["oauth"]
        assert isinstance(app, dict)
        secrets |= {str(app["client_secret"]), f"refresh-{a['account']}"}
    logs = {p: p.read_text(errors="replace") for p in run_dir.rglob("*.log")}
    assert logs, run_dir
    for path, text in logs.items():
        for secret in secrets:
            assert secret not in text, (path, secret)
        assert not ACCESS_TOKEN.search(text), (path, ACCESS_TOKEN.search(text))
