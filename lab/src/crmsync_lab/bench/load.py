"""Throughput scenarios: ``seed-load`` (through the HTTP API) and ``batch``.

``seed-load`` is the seed's load test scaled up: contacts written through
``POST /v1/contacts:batch`` to 2 Salesforce and 2 HubSpot connections of one
tenant, single-record mode, mock limits raised to 500/s each so crmsync (not
the CRM) is what is measured; afterwards every CRM record is checked.

``batch`` syncs with Salesforce collections (200) and HubSpot batch upserts
(100): first the throughput on a standing backlog (records synced per
second, a record = one contact at one connection), then the commit-to-ack
latency while contacts are written at half that rate.
"""

from __future__ import annotations

import asyncio
import math

from crmsync_lab.bench.report import ScenarioResult, percentile, ratio, target
from crmsync_lab.bench.scenarios import cluster_config, fill_window_result, raw_baseline, rounded
from crmsync_lab.bench.stage import BenchConfig, Stage, limit_per_second
from crmsync_lab.harness import contacts
from crmsync_lab.harness.cluster import Cluster

SEED_LOAD_LIMIT = 500  # per connection: 4 x 500 = 2,000 req/s of capacity
# Requests per contact: 2 Salesforce + 2 HubSpot, HubSpot skips the ~20% without a company.
REQUESTS_PER_CONTACT = 3.6


async def run_seed_load(cfg: BenchConfig) -> list[ScenarioResult]:
    args = ["--sf-limit", f"{SEED_LOAD_LIMIT}/s", "--hs-limit", f"{SEED_LOAD_LIMIT}/s"]
    ccfg = cluster_config(cfg, "seed-load", mock_scenario="demo", mock_args=args, processes=2)
    async with Cluster(ccfg) as cluster:
        stage = Stage(cluster, cfg, "seed-load")
        async with stage.procs:
            raw = await raw_baseline(cluster, cfg, min(cfg.duration, 10.0))
            capacity = 4 * SEED_LOAD_LIMIT
            n = math.ceil(capacity * (cfg.warmup + cfg.duration) * 1.1 / REQUESTS_PER_CONTACT)
            await stage.pause_all()
            cfg.say(f"seed-load: {n} contacts through the API")
            t0 = asyncio.get_running_loop().time()
            await cluster.put_contacts(contacts.generate(n, id_prefix="load"), parallel=8)
            api_s = asyncio.get_running_loop().time() - t0
            await stage.wait_outbox_empty()
            await stage.resume_all()
            await asyncio.sleep(cfg.warmup)
            m = await stage.measure(cfg.duration)
            cfg.say("seed-load: waiting for the rest to sync, then checking every CRM record")
            synced = await cluster.wait_synced(within=300)
            report = await cluster.verify()
    limits = {c.id: limit_per_second(c) for c in cluster.connections}
    res = ScenarioResult("seed-load", m.seconds)
    res.metrics = {
        "contacts": n,
        "api_contacts_per_s": round(n / api_s, 1) if api_s > 0 else None,
        "capacity_req_per_s": float(capacity),
        "raw_req_per_s": raw.metrics["req_per_s"],
    }
    fill_window_result(res, stage, m, limits)
    res.metrics["ratio_to_raw"] = rounded(ratio(res.metrics["req_per_s"], raw.metrics["req_per_s"]))
    res.metrics["all_synced"] = synced
    res.metrics["crm_check_problems"] = len(report.problems())
    res.notes.extend(report.problems()[:10])
    res.targets = [
        target("req_per_s", res.metrics["req_per_s"], ">=", 1000),
        target("violations", res.metrics["violations"], "<=", 0),
        target("crm_check_problems", res.metrics["crm_check_problems"], "<=", 0),
    ]
    return [raw, res]


async def run_batch(cfg: BenchConfig) -> list[ScenarioResult]:
    """2 Salesforce (100/s x 200 records) + 2 HubSpot (50/s x 100) connections, one
    tenant: 50,000 records/s of CRM capacity, so crmsync is the bottleneck."""
    ccfg = cluster_config(cfg, "batch", mock_scenario="demo", processes=2, batch_size=200)
    async with Cluster(ccfg) as cluster:
        stage = Stage(cluster, cfg, "batch")
        ids = stage.ids
        tenant = cluster.config.tenant
        async with stage.procs:
            # Throughput: a standing backlog sized for 25,000 records/s.
            per_conn = math.ceil(25_000 * (cfg.warmup + cfg.duration) * 1.2 / len(ids))
            setup = await stage.load_backlog(
                dict.fromkeys(ids, per_conn), dict.fromkeys(ids, tenant)
            )
            await stage.resume_all()
            await asyncio.sleep(cfg.warmup)
            m = await stage.measure(cfg.duration)
            throughput = m.synced(ids) / m.seconds
            cfg.say(f"batch: {throughput:,.0f} records/s; draining the rest")
            await stage.wait_idle(within=600)
            # Latency at half the measured rate (contacts/s = records/s / connections).
            half = max(1.0, throughput / 2 / len(ids))
            since = await stage.db_now()
            fed = await stage.feed([tenant], half, cfg.duration, "lat")
            drained = await stage.wait_idle(within=120)
            await asyncio.sleep(1.0)  # the last ledger writes
            lat = await stage.commit_to_ack(ids, since)
    limits = {c.id: limit_per_second(c) for c in cluster.connections}
    res = ScenarioResult("batch", m.seconds)
    res.metrics = {
        "connections": len(ids),
        "backlog_records": per_conn * len(ids),
        "setup_s": round(setup, 1),
    }
    fill_window_result(res, stage, m, limits)
    p99 = percentile(lat, 0.99)
    res.metrics.update(
        {
            "records_per_s": round(throughput, 1),
            "contacts_per_s": round(throughput / len(ids), 1),
            "records_per_request": rounded(ratio(m.synced(ids), m.worker_requests(ids))),
            "latency_phase_contacts_per_s": round(half, 1),
            "latency_phase_contacts": fed,
            "latency_samples": len(lat),
            "commit_to_ack_p50_s": rounded(percentile(lat, 0.5)),
            "commit_to_ack_p99_s": rounded(p99),
            "commit_to_ack_max_s": rounded(max(lat, default=None)),
            "latency_phase_drained": drained,
        }
    )
    res.notes.append(
        "records = contact x connection synced (ledger rows); contacts_per_s = records_per_s / "
        "connections, every contact goes to all of them"
    )
    res.targets = [
        target("records_per_s", throughput, ">=", 10_000),
        target("commit_to_ack_p99_s", p99, "<=", 2.0),
        target("violations", res.metrics["violations"], "<=", 0),
    ]
    return [res]
