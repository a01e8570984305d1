"""What a benchmark run found, and the arithmetic behind it (pure, unit-tested).

A scenario returns one ``ScenarioResult``: headline metrics, the targets of
the issue with whether each was met, per-connection rates against their
limits, and CPU seconds and peak memory per process. ``render`` prints it as
tables; ``to_json`` is what ``--json`` prints.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from rich.console import Console
from rich.table import Table

Op = Literal[">=", "<="]


def deltas(cumulative: Sequence[float]) -> list[float]:
    """Per-step increases of a cumulative counter (a counter reset counts as 0)."""
    return [max(0.0, b - a) for a, b in itertools.pairwise(cumulative)]


def rate(count0: float, count1: float, t0: float, t1: float) -> float:
    """Events per second between two readings of a cumulative counter."""
    if t1 <= t0:
        return 0.0
    return max(0.0, count1 - count0) / (t1 - t0)


def sliding_max(series: Sequence[float], window: int) -> float:
    """The largest sum of ``window`` consecutive items (all of them if fewer)."""
    if window < 1:
        raise ValueError("window must be at least 1")
    if not series:
        return 0.0
    if len(series) <= window:
        return float(sum(series))
    acc = float(sum(series[:window]))
    best = acc
    for i in range(window, len(series)):
        acc += series[i] - series[i - window]
        best = max(best, acc)
    return best


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-quantile (0..1) with linear interpolation between ranks; None if empty."""
    if not 0.0 <= q <= 1.0:
        raise ValueError("q must be within 0 and 1")
    if not values:
        return None
    ordered = sorted(values)
    pos = q * (len(ordered) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """numerator / denominator, or None when either is missing or the denominator is 0."""
    if numerator is None or denominator is None or denominator == 0:
        return None
    return numerator / denominator


def cpu_per_1000(cpu_seconds: float, contacts: float) -> float | None:
    """CPU seconds spent per 1,000 synced contacts."""
    return ratio(cpu_seconds * 1000.0, contacts)


@dataclass(frozen=True, slots=True)
class Target:
    name: str
    value: float | None
    op: Op
    threshold: float

    @property
    def met(self) -> bool:
        if self.value is None:
            return False
        return self.value >= self.threshold if self.op == ">=" else self.value <= self.threshold


def target(name: str, value: float | None, op: Op, threshold: float) -> Target:
    return Target(name, value, op, threshold)


@dataclass
class ProcUsage:
    name: str
    pids: list[int]
    cpu_seconds: float  # user + system within the measured window
    peak_rss_mb: float | None  # over the whole run (None: not sampled, e.g. PostgreSQL)


@dataclass
class ConnRate:
    id: str
    crm: str
    limit_per_s: float | None  # None: no limit at the mock
    sent_per_s: float  # requests that arrived at the mock within the window
    violations: int  # requests the mock refused over the limit (whole run)
    max_in_any_1s: int  # largest number of arrivals in any sliding second (whole run)
    series: list[float] = field(default_factory=list)  # requests per second, worker counters

    @property
    def share_of_limit(self) -> float | None:
        return ratio(self.sent_per_s, self.limit_per_s)


@dataclass
class ScenarioResult:
    scenario: str
    window_seconds: float
    metrics: dict[str, Any] = field(default_factory=dict)
    targets: list[Target] = field(default_factory=list)
    connections: list[ConnRate] = field(default_factory=list)
    processes: list[ProcUsage] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    profile: dict[str, Any] = field(default_factory=dict)  # per worker: py-spy shares

    @property
    def ok(self) -> bool:
        return all(t.met for t in self.targets)


def to_json(results: Sequence[ScenarioResult], machine: Mapping[str, Any]) -> dict[str, Any]:
    out = []
    for r in results:
        d = asdict(r)
        d["ok"] = r.ok
        d["targets"] = [{**asdict(t), "met": t.met} for t in r.targets]
        d["connections"] = [
            {**asdict(c), "share_of_limit": _round(c.share_of_limit)} for c in r.connections
        ]
        out.append(d)
    return {"machine": dict(machine), "scenarios": out}


def _round(v: float | None, digits: int = 3) -> float | None:
    return None if v is None else round(v, digits)


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.3f}" if abs(v) < 10 else f"{v:,.1f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def render(result: ScenarioResult, console: Console, *, max_connections: int = 12) -> None:
    """The result as rich tables: metrics and targets, processes, connections."""
    head = Table(title=f"crmsync bench: {result.scenario} ({result.window_seconds:.1f} s window)")
    head.add_column("metric")
    head.add_column("value", justify="right")
    for k, v in result.metrics.items():
        head.add_row(k, _fmt(v))
    for t in result.targets:
        mark = "[green]met[/green]" if t.met else "[red]missed[/red]"
        head.add_row(f"target: {t.name} {t.op} {_fmt(t.threshold)}", f"{_fmt(t.value)} {mark}")
    console.print(head)
    if result.processes:
        procs = Table(title="processes (CPU within the window, peak RSS over the run)")
        for col in ("process", "pids", "CPU s", "peak RSS MB"):
            procs.add_column(col, justify="left" if col == "process" else "right")
        for p in result.processes:
            pids = ",".join(str(x) for x in p.pids[:4]) + ("…" if len(p.pids) > 4 else "")
            rss = "-" if p.peak_rss_mb is None else f"{p.peak_rss_mb:.0f}"
            procs.add_row(p.name, pids, f"{p.cpu_seconds:.2f}", rss)
        console.print(procs)
    if result.connections:
        conns = Table(title="connections (sent = arrivals at the mock within the window)")
        for col in ("connection", "crm", "limit/s", "sent/s", "of limit", "max 1s", "violations"):
            conns.add_column(col, justify="left" if col in ("connection", "crm") else "right")
        shown = sorted(result.connections, key=lambda c: c.share_of_limit or 0.0)
        for c in shown[:max_connections]:
            share = c.share_of_limit
            conns.add_row(
                c.id,
                c.crm,
                _fmt(c.limit_per_s),
                f"{c.sent_per_s:,.1f}",
                "-" if share is None else f"{share:.1%}",
                _fmt(c.max_in_any_1s),
                _fmt(c.violations),
            )
        if len(shown) > max_connections:
            conns.caption = f"lowest {max_connections} of {len(shown)} by share of limit"
        console.print(conns)
    for name, prof in result.profile.items():
        if not isinstance(prof, dict) or not prof.get("inclusive"):
            console.print(f"profile {name}: {prof}")
            continue
        table = Table(title=f"profile {name}: share of {prof['samples']} samples")
        table.add_column("function (including callees)")
        table.add_column("share", justify="right")
        for fn, share in prof["inclusive"]:
            table.add_row(fn, f"{share:.1%}")
        console.print(table)
    for note in result.notes:
        console.print(f"note: {note}")
