"""The benchmark's arithmetic: rates, sliding maxima, percentiles, ratios, targets."""

from __future__ import annotations

import pytest

from crmsync_lab.bench.profile import summarize
from crmsync_lab.bench.report import (
    ConnRate,
    ProcUsage,
    ScenarioResult,
    cpu_per_1000,
    deltas,
    percentile,
    rate,
    ratio,
    sliding_max,
    target,
    to_json,
)
from crmsync_lab.bench.stage import Measured, limit_per_second
from crmsync_lab.harness.cluster import ConnectionInfo


def test_deltas_of_a_cumulative_counter() -> None:
    assert deltas([0, 10, 25, 25, 40]) == [10, 15, 0, 15]
    assert deltas([5]) == []
    # A counter that went back (reset) counts as no increase, never negative.
    assert deltas([10, 3, 8]) == [0, 5]


@pytest.mark.parametrize(
    ("c0", "c1", "t0", "t1", "want"),
    [(0, 100, 0, 2, 50.0), (100, 100, 1, 2, 0.0), (0, 10, 3, 3, 0.0), (50, 40, 0, 1, 0.0)],
)
def test_rate(c0: float, c1: float, t0: float, t1: float, want: float) -> None:
    assert rate(c0, c1, t0, t1) == want


def test_sliding_max_finds_the_busiest_window() -> None:
    series = [1, 5, 2, 8, 1, 0, 9]
    assert sliding_max(series, 1) == 9
    assert sliding_max(series, 2) == 10  # 2 + 8
    assert sliding_max(series, 3) == 15  # 5+2+8
    assert sliding_max(series, 10) == sum(series)
    assert sliding_max([], 3) == 0
    with pytest.raises(ValueError):
        sliding_max(series, 0)


def test_percentile_interpolates_between_ranks() -> None:
    values = [10.0, 20.0, 30.0, 40.0, 50.0]
    assert percentile(values, 0.0) == 10.0
    assert percentile(values, 1.0) == 50.0
    assert percentile(values, 0.5) == 30.0
    assert percentile(values, 0.25) == 20.0
    assert percentile([3.0, 1.0, 2.0], 0.5) == 2.0  # unsorted input
    assert percentile(list(range(101)), 0.99) == pytest.approx(99.0)
    assert percentile([1.0, 2.0], 0.75) == pytest.approx(1.75)
    assert percentile([], 0.5) is None
    with pytest.raises(ValueError):
        percentile(values, 1.5)


def test_ratio_and_cpu_per_1000() -> None:
    assert ratio(1, 4) == 0.25
    assert ratio(1, 0) is None
    assert ratio(None, 3) is None
    assert cpu_per_1000(2.0, 4000) == 0.5
    assert cpu_per_1000(2.0, 0) is None


def test_targets_compare_both_ways_and_fail_without_a_value() -> None:
    assert target("rps", 3600, ">=", 3500).met
    assert not target("rps", 3400, ">=", 3500).met
    assert target("violations", 0, "<=", 0).met
    assert not target("violations", 3, "<=", 0).met
    assert not target("ratio", None, ">=", 0.5).met


def test_result_ok_and_json_shape() -> None:
    res = ScenarioResult("seed", 60.0, metrics={"req_per_s": 3600.0})
    res.targets = [target("req_per_s", 3600.0, ">=", 3500)]
    res.connections = [ConnRate("c1", "salesforce", 100.0, 95.0, 0, 100, [95.0, 96.0])]
    res.processes = [ProcUsage("worker-1", [123], 10.5, 80.0)]
    assert res.ok
    out = to_json([res], {"nproc": 2})
    assert out["machine"] == {"nproc": 2}
    (s,) = out["scenarios"]
    assert s["ok"] is True
    assert s["targets"][0]["met"] is True
    assert s["connections"][0]["share_of_limit"] == 0.95
    assert s["processes"][0]["cpu_seconds"] == 10.5
    res.targets.append(target("violations", 2, "<=", 0))
    assert not res.ok


def test_connection_limit_per_second() -> None:
    def info(spec: str) -> ConnectionInfo:
        return ConnectionInfo("c", "hubspot", "a", "http://x", "t", spec)

    assert limit_per_second(info("100/s")) == 100.0
    assert limit_per_second(info("100/10s")) == 10.0
    assert limit_per_second(info("6000/min")) == 100.0
    assert limit_per_second(info("1000000/s")) is None  # the bench's "no limit"


def test_profile_summary_shares() -> None:
    lines = [
        "run (loop.py:1);send (crmsync/worker.py:10);write (aiohttp/x.py:5) 6",
        "run (loop.py:1);send (crmsync/worker.py:12);read (aiohttp/y.py:7) 2",
        "run (loop.py:1);claim (crmsync/queue/store.py:3) 2",
        "garbage line",
    ]
    out = summarize(lines)
    assert out["samples"] == 10
    assert out["self"][0] == ("write (aiohttp/x.py)", 0.6)
    inclusive = dict(out["inclusive"])
    # Line numbers are folded: both send frames are one function.
    assert inclusive["send (crmsync/worker.py)"] == 0.8
    assert "run (loop.py)" not in inclusive  # on every stack: says nothing
    assert summarize([])["samples"] == 0


def test_violations_are_matched_to_the_mock_stalls_before_them() -> None:
    m = Measured(
        seconds=60.0,
        mock0={},
        mock1={
            "salesforce/a": {"violations_at": [100.2, 150.0]},
            "hubspot/b": {"violations_at": [100.9, 99.0]},
        },
        counters0={},
        counters1={},
        mock_loop={"recent": [[100.0, 55.0], [149.5, 25.0]]},
    )
    # 100.2 and 100.9 follow the 55 ms stall; 150.0 follows only a short one;
    # 99.0 came before any stall.
    assert m.violations_after_stalls(40.0) == 2
    assert m.violations_after_stalls(20.0) == 3
    assert m.mock_stalls(40.0) == 1
