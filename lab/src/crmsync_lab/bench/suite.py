"""Which scenarios ``crmsync bench --scenario X`` runs, in order."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import replace

from crmsync.errors import UserError
from crmsync_lab.bench.daily import run_daily
from crmsync_lab.bench.load import run_batch, run_seed_load
from crmsync_lab.bench.report import ScenarioResult
from crmsync_lab.bench.scale import run_fair, run_many
from crmsync_lab.bench.scenarios import run_seed, run_single
from crmsync_lab.bench.stage import BenchConfig
from crmsync_lab.bench.sustained import run_sustained

Runner = Callable[[BenchConfig], Awaitable[list[ScenarioResult]]]


async def _raw(cfg: BenchConfig) -> list[ScenarioResult]:
    return await run_single(cfg, with_worker=False)


SCENARIOS: dict[str, Runner] = {
    "raw": _raw,
    "single": run_single,
    "seed": run_seed,
    "seed-load": run_seed_load,
    "batch": run_batch,
    "fair": run_fair,
    "many": run_many,
    "daily": run_daily,
    "sustained": run_sustained,  # not in "all": ten minutes or more
}
ALL = ("single", "seed", "seed-load", "batch", "fair", "many")


# Measured seconds when --duration is not given (seed: the 60 s; daily:
# one and a half compressed days of 20 s).
DURATIONS = {
    "sustained": 600.0,
    "raw": 10.0,
    "single": 20.0,
    "seed": 60.0,
    "seed-load": 20.0,
    "batch": 20.0,
    "daily": 30.0,
}


# Run on the Redis Cluster too when BenchConfig.cluster_url is given, and the
# throughput figures whose ratio cluster/standalone is reported (ratio_to_raw:
# each run against the raw loop measured just before it, which takes out most of
# a shared machine's drift between the two runs).
ON_CLUSTER = ("seed", "seed-load", "batch")
THROUGHPUT = ("req_per_s", "records_per_s", "ratio_to_raw")


async def run(names: list[str], cfg: BenchConfig) -> list[ScenarioResult]:
    out: list[ScenarioResult] = []
    for name in names:
        cfg.say(f"scenario {name}")
        own = cfg if cfg.duration else replace(cfg, duration=DURATIONS.get(name, 20.0))
        results = await SCENARIOS[name](own)
        out.extend(results)
        if cfg.cluster_url and name in ON_CLUSTER:
            cfg.say(f"scenario {name} on the Redis Cluster at {cfg.cluster_url}")
            clustered = replace(own, redis_url=cfg.cluster_url, redis_mode="cluster")
            out.extend(beside(results, await SCENARIOS[name](clustered)))
    return out


def beside(standalone: list[ScenarioResult], cluster: list[ScenarioResult]) -> list[ScenarioResult]:
    """The cluster's results, named ``<scenario>@cluster``, each with the ratio
    cluster/standalone of its throughput figures."""
    for alone, on in zip(standalone, cluster, strict=True):
        on.scenario = f"{on.scenario}@cluster"
        for key in THROUGHPUT:
            a, b = alone.metrics.get(key), on.metrics.get(key)
            if isinstance(a, int | float) and isinstance(b, int | float) and a > 0:
                on.metrics[f"{key}_cluster_to_standalone"] = round(b / a, 3)
    return cluster


def resolve(name: str) -> list[str]:
    if name == "all":
        return list(ALL)
    if name not in SCENARIOS:
        known = ", ".join([*SCENARIOS, "all"])
        raise UserError(f"--scenario {name!r} is not known; use one of: {known}")
    return [name]
