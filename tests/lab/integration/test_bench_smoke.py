"""`crmsync bench` works end to end: the raw loop and the single scenario, briefly.

Not a timed test: it asserts the structure of the results and that something
was sent, never a speed (machines here are shared and noisy).
"""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from typer.testing import CliRunner

from crmsync.cli import app
from crmsync_lab.bench import suite
from crmsync_lab.bench.plot import plot
from crmsync_lab.bench.report import to_json
from crmsync_lab.bench.stage import BenchConfig, database_name


async def test_single_runs_raw_then_the_worker(
    database_url: str, redis_url: str, tmp_path: Path
) -> None:
    cfg = BenchConfig(
        database_url=database_url,
        redis_url=redis_url,
        fresh_database=False,
        duration=3.0,
        warmup=1.0,
        concurrency=20,
        run_dir=tmp_path / "runs",
    )
    raw, after, single = await suite.run(suite.resolve("single"), cfg)

    assert raw.scenario == "raw"
    assert raw.metrics["req_per_s"] > 0
    # The mock counted the raw loop's requests too.
    assert raw.metrics["mock_req_per_s"] > 0
    assert raw.metrics["errors"] == 0
    assert {p.name for p in raw.processes} >= {"raw-loop", "mock-crm"}

    # The raw loop again after the window, the worker idle; the ceiling is the mean.
    assert after.scenario == "raw-after" and after.metrics["req_per_s"] > 0
    assert single.scenario == "single"
    assert single.metrics["raw_before_req_per_s"] == raw.metrics["req_per_s"]
    assert single.metrics["raw_after_req_per_s"] == after.metrics["req_per_s"]
    mean = (raw.metrics["req_per_s"] + after.metrics["req_per_s"]) / 2
    assert abs(single.metrics["raw_req_per_s"] - mean) <= 0.1
    assert single.metrics["req_per_s"] > 0
    assert single.metrics["synced_per_s"] > 0
    assert single.metrics["worker_counted_req_per_s"] > 0
    assert single.metrics["ratio_to_raw"] > 0
    assert single.metrics["violations"] == 0
    assert single.metrics["backlog_left_min"] > 0  # the backlog outlasted the window
    assert [c.id for c in single.connections] == ["bench-sf-01"]
    assert single.connections[0].limit_per_s is None
    assert sum(single.connections[0].series) > 0
    names = {p.name: p for p in single.processes}
    assert names["worker-1"].cpu_seconds > 0
    assert (names["worker-1"].peak_rss_mb or 0) > 0
    assert single.metrics["worker_cpu_s_per_1000_synced"] > 0
    assert [t.name for t in single.targets] == ["ratio_to_raw"]

    doc = orjson.loads(orjson.dumps(to_json([raw, after, single], {"nproc": 2})))
    assert [s["scenario"] for s in doc["scenarios"]] == ["raw", "raw-after", "single"]
    charts = plot(single, tmp_path / "plots")
    assert [p.name for p in charts] == ["single-total.png", "single-connections.png"]
    assert all(p.stat().st_size > 1000 for p in charts)


def test_cli_raw_prints_json(database_url: str, redis_url: str, tmp_path: Path) -> None:
    base, _, _ = database_url.rpartition("/")
    result = CliRunner().invoke(
        app,
        [
            "bench",
            "--scenario",
            "raw",
            "--duration",
            "3",
            "--concurrency",
            "20",
            "--json",
            "--database-url",
            f"{base}/postgres",
            "--database",
            database_name(database_url),
            "--redis-url",
            redis_url,
            "--run-dir",
            str(tmp_path / "runs"),
        ],
    )
    assert result.exit_code == 0, result.output
    doc = orjson.loads(result.stdout)
    assert doc["machine"]["nproc"] >= 1
    (raw,) = doc["scenarios"]
    assert raw["scenario"] == "raw"
    assert raw["metrics"]["req_per_s"] > 0


@pytest.mark.slow
async def test_daily_holds_each_crms_budget(
    database_url: str, redis_url: str, tmp_path: Path
) -> None:
    """The daily scenario, one and a half 10-second days: no request over a daily
    budget or a 10-second window, each budget mostly used, Salesforce's spread."""
    cfg = BenchConfig(
        database_url=database_url,
        redis_url=redis_url,
        fresh_database=False,
        duration=15.0,
        warmup=0.0,
        concurrency=50,
        run_dir=tmp_path / "runs",
    )
    (daily,) = await suite.run(suite.resolve("daily"), cfg)
    assert daily.metrics["day_seconds"] == 10.0
    assert daily.metrics["violations"] == 0
    assert daily.metrics["exhausted_early"] == 0
    budgets = daily.metrics["budgets"]
    assert sorted(budgets) == ["bench-hs-01", "bench-hs-02", "bench-sf-01", "bench-sf-02"]
    for cid, b in budgets.items():
        assert b["violations_by"] == {}, cid
        assert b["peak_share_used"] >= 0.5, (cid, b)
        assert b["peak_share_used"] <= 1.0, (cid, b)
    assert [t.name for t in daily.targets] == [
        "violations",
        "exhausted_early",
        "min_peak_share_used",
    ]
