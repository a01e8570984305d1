"""What crmsync is doing: per connection ledger, queues, limits, breakers, latency.

One report for `crmsync status`, `GET /v1/status`, `GET /metrics`, the dashboard
and the demo: PostgreSQL gives the ledger and dead letters; Redis (when reachable)
adds queue depth, breaker state, rate-limit blocks, the workers' counters and the
figures of ``crmsync.figures`` (queue age, sync lag, budget used, relay and
reconcile). A report is of every tenant or of one (``tenant``); ``for_tenant`` cuts
one tenant's out of an every-tenant report (the API's cached /metrics report).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import asyncpg

from crmsync import counters, db, figures
from crmsync.queue.store import QueueStore
from crmsync.redis_client import REDIS_ERRORS, RedisClient

_TOTALS = ("contacts", "deleted_contacts", "outbox", "dead_letters")


async def status_report(pool: asyncpg.Pool[Any], tenant: str | None = None) -> dict[str, Any]:
    """Per-connection ledger counts by status and dead letters, plus totals per
    tenant and in all (of ``tenant`` only, when given)."""
    async with pool.acquire() as conn:
        rows = await conn.fetch(db.q("api_status_connections"), tenant)
        per_tenant = await conn.fetch(db.q("api_status_tenants"), tenant)
    tenants = {r["tenant"]: {k: r[k] for k in _TOTALS} for r in per_tenant}
    return {
        "connections": [
            {
                "id": r["id"],
                "tenant": r["tenant"],
                "crm": r["crm"],
                "paused": r["paused_reason"] is not None,
                "paused_reason": r["paused_reason"],
                "sync": dict(r["sync"]),
                "dead_letters": r["dead_letters"],
                # Rebuilt from PostgreSQL after Redis lost the connection's state.
                "redis_heals": r["redis_heals"],
                "healed_at": r["healed_at"].isoformat() if r["healed_at"] else None,
            }
            for r in rows
        ],
        "totals": _sum(tenants.values()),
        "tenants": tenants,
    }


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="seconds")


def _sum(totals: Any) -> dict[str, int]:
    out = dict.fromkeys(_TOTALS, 0)
    for t in totals:
        for k in _TOTALS:
            out[k] += t[k]
    return out


def for_tenant(report: dict[str, Any], tenant: str | None) -> dict[str, Any]:
    """``report`` (of every tenant) cut down to ``tenant``'s connections and totals."""
    if tenant is None:
        return report
    mine = report["tenants"].get(tenant, dict.fromkeys(_TOTALS, 0))
    every = {k: v for k, v in report.items() if k != "processes"}  # of every tenant
    return {
        **every,
        "connections": [c for c in report["connections"] if c["tenant"] == tenant],
        "totals": dict(mine),
        "tenants": {tenant: dict(mine)},
    }


async def collect(
    pool: asyncpg.Pool[Any], redis: RedisClient | None, tenant: str | None = None
) -> dict[str, Any]:
    report = await status_report(pool, tenant)
    if redis is None:
        return report
    store = QueueStore(redis)
    try:
        oldest = await figures.oldest_enqueued_ms(redis, [c["id"] for c in report["connections"]])
        for c in report["connections"]:
            depth = await store.depth(c["id"])
            seen = depth.stats  # the workers' and the claim script's counters
            blocked = depth.blocked_until_ms or 0
            c["queue"] = {
                "ready": depth.ready,
                "leased": depth.leased,
                "delayed": depth.delayed,
                "requeue": depth.requeue,
            }
            c["breaker"] = depth.breaker
            c["blocked_for_s"] = round(max(0.0, (blocked - depth.now_ms) / 1000), 1)
            # Until when a CRM's answer holds the connection back, and the CRM's words.
            c["blocked_until"] = _iso(blocked) if blocked else None
            c["blocked_reason"] = depth.blocked_reason if blocked else None
            c["counters"] = {
                k: v for k, v in seen.items() if not k.startswith(("lat_", "lag_", "synclag_"))
            }
            c["latency_ms"] = {
                "p50": counters.percentile(seen, 0.50),
                "p99": counters.percentile(seen, 0.99),
                "send_lag_p99": counters.percentile(seen, 0.99, "lag"),
            }
            c.update(figures.connection_figures(depth, oldest.get(c["id"])))
        if tenant is None:  # the relay's and reconcile's counters concern every tenant
            report["processes"] = await figures.process_counters(redis)
    except REDIS_ERRORS as exc:
        report["redis_error"] = str(exc)
    return report


# Counters the workers and the claim script keep per connection, as Prometheus
# counters: crmsync_connection_<name>_total{connection, crm, tenant}.
EXPORTED_COUNTERS = (
    "created",
    "adopted",
    "updated",
    "deleted",
    "skipped",
    "retried",
    "dead_lettered",
    "crm_rate_limited",
    "requests",
    "claims",
    "admitted",
    "readmitted",
    "restamped",
    "backdated",
    "backdated_ms",
    "held_in_flight",
    "slowdowns",
    "breaker_trips",
    "leases_expired",
    "token_refreshes",
    "token_replaced",
    "auth_pauses",
)


class _ReportCollector:
    """Renders one status report as Prometheus metric families."""

    def __init__(self, report: dict[str, Any]) -> None:
        self.report = report

    def collect(self) -> Any:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        labels = ["connection", "crm", "tenant"]
        queue = GaugeMetricFamily(
            "crmsync_queue_depth",
            "Contacts waiting per connection, by queue.",
            labels=[*labels, "queue"],
        )
        ledger = GaugeMetricFamily(
            "crmsync_ledger_rows",
            "Ledger rows per connection, by status.",
            labels=[*labels, "status"],
        )
        dead = GaugeMetricFamily(
            "crmsync_dead_letters", "Dead letters per connection.", labels=labels
        )
        heals = CounterMetricFamily(
            "crmsync_redis_heals",
            "Times the connection's Redis state was lost and rebuilt from PostgreSQL.",
            labels=labels,
        )
        paused = GaugeMetricFamily("crmsync_connection_paused", "1 when paused.", labels=labels)
        breaker = GaugeMetricFamily(
            "crmsync_breaker_open",
            "1 when the connection's breaker is open or half-open.",
            labels=labels,
        )
        blocked = GaugeMetricFamily(
            "crmsync_rate_limit_blocked_seconds",
            "Seconds a 429 still blocks the connection.",
            labels=labels,
        )
        families = {
            name: CounterMetricFamily(
                f"crmsync_connection_{name}",
                f"Per-connection count of {name.replace('_', ' ')}.",
                labels=labels,
            )
            for name in EXPORTED_COUNTERS
        }
        for c in self.report["connections"]:
            lv = [c["id"], c["crm"], c["tenant"]]
            for status, n in c["sync"].items():
                ledger.add_metric([*lv, status], n)
            dead.add_metric(lv, c["dead_letters"])
            heals.add_metric(lv, c.get("redis_heals", 0))
            paused.add_metric(lv, 1 if c["paused"] else 0)
            if "queue" in c:
                for q, n in c["queue"].items():
                    queue.add_metric([*lv, q], n or 0)
                breaker.add_metric(lv, 0 if c["breaker"] in (None, "closed") else 1)
                blocked.add_metric(lv, c["blocked_for_s"])
                for name, fam in families.items():
                    fam.add_metric(lv, c["counters"].get(name, 0))
        outbox = GaugeMetricFamily(
            "crmsync_outbox_pending", "Captured changes not yet relayed.", labels=["tenant"]
        )
        for tenant, totals in self.report["tenants"].items():
            outbox.add_metric([tenant], totals["outbox"])
        yield from (
            queue,
            ledger,
            dead,
            heals,
            paused,
            breaker,
            blocked,
            *families.values(),
            outbox,
        )
        yield from figures.families(self.report)


def prometheus_text(report: dict[str, Any]) -> bytes:
    """The report in the Prometheus text format (for GET /metrics)."""
    from prometheus_client import CollectorRegistry, generate_latest

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_ReportCollector(report))
    return generate_latest(registry)
