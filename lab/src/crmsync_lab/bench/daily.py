"""``crmsync bench --scenario daily``: a compressed day against the strict mocks in
the CRMs' own limit model (docs/LIMITS.md).

Two Salesforce orgs (a rolling allocation, a fifth of it already spent by other
apps when the run starts) and two HubSpot portals (the capacity tier's 10-second
window and a daily limit reset at midnight in New York), each with a backlog of
twice its daily budget, two worker processes, single-record mode. The measured
window is one and a half compressed days. Reported per connection: the requests
refused over the daily budget or any 10-second window (the target is 0), the
largest share of the daily budget in use at once, and whether it was spread:
Salesforce orgs must not reach 90% of their allocation within the first half
of the day (crmsync spends at most 1/24 of it per 1/24 of the day).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

from crmsync_lab.bench.report import ScenarioResult, ratio, target
from crmsync_lab.bench.scenarios import cluster_config, fill_window_result, rounded
from crmsync_lab.bench.stage import BenchConfig, Stage
from crmsync_lab.harness import mock_client
from crmsync_lab.harness.cluster import Cluster

SF_ALLOCATION = 3000
HS_TIER = 250
HS_DAILY = 300
OTHER_APPS_SHARE = 0.2  # of each org's allocation, spent before the run
SAMPLE_S = 0.25


@dataclass
class Budget:
    """The mock's daily count of one account, sampled through the run."""

    crm: str
    most: int = 0
    samples: list[tuple[float, int]] = field(default_factory=list)  # (seconds, used)

    @property
    def peak(self) -> int:
        return max((u for _, u in self.samples), default=0)

    def first_at(self, share: float) -> float | None:
        """Seconds into the run when the count first reached ``share`` of the budget."""
        return next((t for t, u in self.samples if u >= share * self.most), None)


async def _sample(cluster: Cluster, seconds: float, budgets: dict[str, Budget]) -> None:
    t0 = time.monotonic()
    while (now := time.monotonic() - t0) < seconds:
        stats = (await cluster.mock_stats())["accounts"]
        for key, b in budgets.items():
            daily = stats[key]["daily"]
            b.most = int(daily["max"])
            b.samples.append((now, int(daily["used"])))
        await asyncio.sleep(SAMPLE_S)


async def run_daily(cfg: BenchConfig) -> list[ScenarioResult]:
    day = max(10.0, cfg.duration / 1.5)
    args = [
        *("--salesforce", "2", "--hubspot", "2", "--limit-model", "crm"),
        *("--day-seconds", f"{day:g}", "--sf-daily", str(SF_ALLOCATION)),
        *("--hs-tier", str(HS_TIER), "--hs-daily", str(HS_DAILY)),
        *("--hs-time-zone", "America/New_York"),
    ]
    ccfg = cluster_config(cfg, "daily", mock_scenario="none", mock_args=args, processes=2)
    async with Cluster(ccfg) as cluster:
        stage = Stage(cluster, cfg, "daily")
        async with stage.procs:
            await stage.tenant_per_connection()
            budget = {
                c.id: SF_ALLOCATION if c.crm == "salesforce" else HS_DAILY
                for c in cluster.connections
            }
            setup = await stage.load_backlog(
                {cid: 2 * n for cid, n in budget.items()}, {cid: cid for cid in stage.ids}
            )
            for c in cluster.connections:
                if c.crm == "salesforce":
                    spent = int(SF_ALLOCATION * OTHER_APPS_SHARE)
                    await mock_client.usage(cluster.http, cluster.mock_url, c.crm, c.account, spent)
            budgets = {f"{c.crm}/{c.account}": Budget(c.crm) for c in cluster.connections}
            await stage.resume_all()
            seconds = 1.5 * day
            m, _ = await asyncio.gather(stage.measure(seconds), _sample(cluster, seconds, budgets))
            final = (await cluster.mock_stats())["accounts"]
    res = ScenarioResult("daily", m.seconds)
    res.metrics = {"day_seconds": day, "connections": len(budget), "setup_s": round(setup, 1)}
    fill_window_result(res, stage, m, {cid: None for cid in budget})
    per: dict[str, Any] = {}
    early = 0
    for c in cluster.connections:
        key = f"{c.crm}/{c.account}"
        b = budgets[key]
        reach = b.first_at(0.9)
        spread = c.crm != "salesforce" or reach is None or reach >= day / 2
        early += 0 if spread else 1
        per[c.id] = {
            "violations_by": final[key]["violations_by"],
            "daily_max": b.most,
            "peak_share_used": rounded(ratio(b.peak, b.most)),
            "reached_90pct_at_s": rounded(reach, 1),
            "spread": spread,
        }
    res.metrics["budgets"] = per
    res.metrics["min_peak_share_used"] = min(
        (v["peak_share_used"] or 0.0 for v in per.values()), default=0.0
    )
    res.metrics["exhausted_early"] = early
    res.targets = [
        target("violations", res.metrics["violations"], "<=", 0),
        target("exhausted_early", early, "<=", 0),
        target("min_peak_share_used", res.metrics["min_peak_share_used"], ">=", 0.8),
    ]
    res.notes.append(
        "other apps spent 20% of each Salesforce allocation before the run (the mock's count)"
    )
    return [res]
