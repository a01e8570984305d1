"""The circuit breaker's table, as a model the tests check the Lua breaker against.

closed --N consecutive failures--> open --recovery elapsed, first ask--> half_open
(exactly one probe, cluster-wide) --probe ok--> closed / --probe failed--> open.
Written apart from crmsync's code: an oracle never imports what it checks.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

State = Literal["closed", "open", "half_open"]
Event = Literal["allow", "success", "failure"]
Verdict = Literal["allow", "probe", "refuse"]


@dataclass(frozen=True)
class BreakerConfig:
    threshold: int = 5
    recovery_ms: int = 30_000
    probe_ms: int = 30_000


@dataclass(frozen=True)
class BreakerState:
    state: State = "closed"
    failures: int = 0
    opened_ms: int = 0
    probe_until_ms: int = 0


def transition(s: BreakerState, event: Event, now_ms: int, cfg: BreakerConfig) -> BreakerState:
    """The breaker's state after ``event`` at ``now_ms``."""
    if event == "allow":
        if s.state == "closed":
            return s
        if s.state == "open" and now_ms < s.opened_ms + cfg.recovery_ms:
            return s
        if s.state == "half_open" and now_ms < s.probe_until_ms:
            return s
        # Recovered, or the previous probe never reported: this ask is the probe.
        return replace(s, state="half_open", probe_until_ms=now_ms + cfg.probe_ms)
    ok = event == "success"
    if s.state == "open":
        return s  # late outcomes of requests sent before the trip change nothing
    if s.state == "closed":
        if ok:
            return replace(s, failures=0)
        if s.failures + 1 < cfg.threshold:
            return replace(s, failures=s.failures + 1)
        return BreakerState("open", s.failures + 1, now_ms, 0)
    if ok:
        return BreakerState("closed", 0, s.opened_ms, 0)
    return BreakerState("open", s.failures, now_ms, 0)


def verdict(before: BreakerState, after: BreakerState) -> Verdict:
    """What an ``allow`` event that led from ``before`` to ``after`` answers."""
    if after.state == "closed":
        return "allow"
    if after != before:
        return "probe"
    return "refuse"


def retry_at_ms(s: BreakerState, cfg: BreakerConfig) -> int | None:
    """When a refused caller should ask again."""
    if s.state == "open":
        return s.opened_ms + cfg.recovery_ms
    if s.state == "half_open":
        return s.probe_until_ms
    return None


# Each step: (event, now_ms, expected). For "allow" the expected verdict, else
# the state after the event.
Step = tuple[str, int, str]
FIVE_FAILURES: list[Step] = [
    ("failure", 0, "closed"),
    ("failure", 1, "closed"),
    ("failure", 2, "closed"),
    ("failure", 3, "closed"),
    ("failure", 4, "open"),
]
DEFAULT = BreakerConfig(threshold=5, recovery_ms=30_000, probe_ms=30_000)

CASES: list[tuple[str, BreakerConfig, list[Step]]] = [
    ("closed allows", DEFAULT, [("allow", 0, "allow"), ("success", 1, "closed")]),
    ("opens after five consecutive failures", DEFAULT, [*FIVE_FAILURES, ("allow", 5, "refuse")]),
    (
        "a success resets the count",
        DEFAULT,
        [
            *FIVE_FAILURES[:4],
            ("success", 10, "closed"),
            *[("failure", 11 + i, "closed") for i in range(4)],
            ("allow", 20, "allow"),
        ],
    ),
    (
        "half-open after recovery lets exactly one probe",
        DEFAULT,
        [
            *FIVE_FAILURES,
            ("allow", 30_003, "refuse"),
            ("allow", 30_004, "probe"),
            ("allow", 30_005, "refuse"),
            ("allow", 40_000, "refuse"),
        ],
    ),
    (
        "probe success closes",
        DEFAULT,
        [
            *FIVE_FAILURES,
            ("allow", 30_004, "probe"),
            ("success", 30_100, "closed"),
            ("allow", 30_101, "allow"),
            ("failure", 30_102, "closed"),
        ],
    ),
    (
        "probe failure re-opens with a fresh recovery time",
        DEFAULT,
        [
            *FIVE_FAILURES,
            ("allow", 30_004, "probe"),
            ("failure", 30_100, "open"),
            ("allow", 60_099, "refuse"),
            ("allow", 60_100, "probe"),
        ],
    ),
    (
        "a probe that never reports is replaced after its time",
        BreakerConfig(threshold=5, recovery_ms=30_000, probe_ms=1_000),
        [
            *FIVE_FAILURES,
            ("allow", 30_004, "probe"),
            ("allow", 31_003, "refuse"),
            ("allow", 31_004, "probe"),
        ],
    ),
    (
        "late outcomes while open change nothing",
        DEFAULT,
        [*FIVE_FAILURES, ("success", 10, "open"), ("failure", 20, "open"), ("allow", 30, "refuse")],
    ),
    (
        "threshold and recovery are settable",
        BreakerConfig(threshold=1, recovery_ms=100, probe_ms=50),
        [("failure", 0, "open"), ("allow", 99, "refuse"), ("allow", 100, "probe")],
    ),
]
