"""`crmsync bench --cluster-url`: the cluster's results beside the standalone ones."""

from __future__ import annotations

import pytest

from crmsync_lab.bench.report import ScenarioResult
from crmsync_lab.bench.suite import beside


@pytest.mark.parametrize(
    ("alone", "on", "expected"),
    [
        ({"req_per_s": 3000.0}, {"req_per_s": 2700.0}, {"req_per_s_cluster_to_standalone": 0.9}),
        ({"records_per_s": 20_000}, {"records_per_s": 25_000},
         {"records_per_s_cluster_to_standalone": 1.25}),
        ({"req_per_s": 0.0}, {"req_per_s": 10.0}, {}),  # no ratio of nothing
        ({"req_per_s": None}, {"req_per_s": 10.0}, {}),
        ({}, {"req_per_s": 10.0}, {}),
    ],
)  # fmt: skip
def test_the_cluster_result_is_named_and_carries_the_ratio(
    alone: dict[str, float], on: dict[str, float], expected: dict[str, float]
) -> None:
    [result] = beside(
        [ScenarioResult("seed", 60.0, dict(alone))], [ScenarioResult("seed", 60.0, dict(on))]
    )
    assert result.scenario == "seed@cluster"
    ratios = {k: v for k, v in result.metrics.items() if k.endswith("_cluster_to_standalone")}
    assert ratios == expected
