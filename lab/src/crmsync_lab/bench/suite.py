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
}
ALL = ("single", "seed", "seed-load", "batch", "fair", "many")


# Measured seconds when --duration is not given (seed: the 60 s; daily:
# one and a half compressed days of 20 s).
DURATIONS = {
    "raw": 10.0,
    "single": 20.0,
    "seed": 60.0,
    "seed-load": 20.0,
    "batch": 20.0,
    "daily": 30.0,
}


async def run(names: list[str], cfg: BenchConfig) -> list[ScenarioResult]:
    out: list[ScenarioResult] = []
    for name in names:
        cfg.say(f"scenario {name}")
        own = cfg if cfg.duration else replace(cfg, duration=DURATIONS.get(name, 20.0))
        out.extend(await SCENARIOS[name](own))
    return out


def resolve(name: str) -> list[str]:
    if name == "all":
        return list(ALL)
    if name not in SCENARIOS:
        known = ", ".join([*SCENARIOS, "all"])
        raise UserError(f"--scenario {name!r} is not known; use one of: {known}")
    return [name]
