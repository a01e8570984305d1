"""deploy/: the Prometheus alert rules (checked and unit-tested by promtool) and the
Grafana dashboard, whose every metric must be one that /metrics really exports."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from prometheus_client.parser import text_string_to_metric_families

from crmsync import counters, db
from crmsync.api.app import create_app
from crmsync.capture import relay
from crmsync.capture.reconcile import reconcile
from crmsync.connections import Connection
from crmsync.queue import keys
from crmsync.queue.store import QueueStore
from crmsync.ratelimit import RateWindow
from crmsync.settings import Settings
from support import UNREACHABLE, add_connections, asgi_client

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
RULES = DEPLOY / "prometheus" / "crmsync-rules.yml"
GRAFANA = DEPLOY / "grafana" / "crmsync.json"
METRIC = re.compile(r"\bcrmsync_[a-z0-9_]+\b")


def _promtool() -> str:
    found = shutil.which("promtool")
    assert found, "promtool is missing: `make setup` installs Debian's prometheus package"
    return found


def _promtool_run(*args: str) -> str:
    done = subprocess.run(
        [_promtool(), *args], capture_output=True, text=True, timeout=120, cwd=RULES.parent
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_rules_pass_promtool_check_and_their_unit_tests() -> None:
    assert "SUCCESS: 6 rules found" in _promtool_run("check", "rules", RULES.name)
    assert "SUCCESS" in _promtool_run("test", "rules", "crmsync-rules.test.yml")


def _expressions(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for k, v in node.items():
            if k in ("expr", "query", "definition") and isinstance(v, str):
                yield v
            else:
                yield from _expressions(v)
    elif isinstance(node, list):
        for v in node:
            yield from _expressions(v)


def test_grafana_dashboard_is_valid_json_with_queries() -> None:
    dash = json.loads(GRAFANA.read_text())
    assert dash["uid"] == "crmsync" and dash["panels"]
    for panel in dash["panels"]:
        assert panel["targets"], panel["title"]
        for t in panel["targets"]:
            assert METRIC.search(t["expr"]), (panel["title"], t["expr"])
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))


async def _exported(settings: Settings, redis: aioredis.Redis) -> set[str]:
    """Sample names of /metrics with every kind of figure present: connections with
    short and daily windows, a lag histogram, queued work, relay and reconcile."""
    pool = await db.create_pool(settings.database_url, min_size=1, max_size=4)
    try:
        windows = [RateWindow(100, 10_000), RateWindow(9, 86_400_000)]
        await add_connections(
            pool, [Connection("a", "t", "hubspot", "a", UNREACHABLE, "tok", tuple(windows))]
        )
        store = QueueStore(redis)
        await store.configure(
            "a", windows, breaker_threshold=5, breaker_recovery_ms=30_000, paused=None
        )
        counts: dict[str, int] = {}
        counters.record_sync_lag(counts, 0, 1500)
        for name, n in counts.items():
            await redis.hset(keys.connection("a").stats, name, n)
        await pool.execute("INSERT INTO contacts (id, tenant, email) VALUES ('c', 't', 'c@x.io')")
        await relay.relay_once(pool, store, 10)
        await relay.COUNTS.push(redis, force=True)
        await reconcile(pool, store)
        async with asgi_client(create_app(settings, pool=pool)) as client:
            auth = {"Authorization": f"Bearer {settings.api_keys}"}  # an admin key
            text = (await client.get("/metrics", headers=auth)).text
    finally:
        await pool.close()
    return {s.name for fam in text_string_to_metric_families(text) for s in fam.samples}


async def test_every_metric_of_rules_and_dashboard_is_exported(
    settings: Settings, redis_client: aioredis.Redis
) -> None:
    exported = await _exported(settings, redis_client)
    used: dict[str, set[str]] = {}
    for expr in _expressions(json.loads(GRAFANA.read_text())):
        for name in METRIC.findall(expr):
            used.setdefault(name, set()).add("grafana")
    for name in METRIC.findall(RULES.read_text()):
        used.setdefault(name, set()).add("rules")
    assert len(used) >= 15
    missing = {name: where for name, where in used.items() if name not in exported}
    assert not missing, f"used but not exported by /metrics: {missing}"
