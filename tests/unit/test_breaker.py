"""Breaker transitions, table-driven with a fake clock.

The same CASES run against the Lua breaker in
tests/integration/test_breaker_redis.py, so the two implementations agree.
"""

from __future__ import annotations

import pytest

from crmsync.breaker import BreakerConfig, BreakerState, retry_at_ms, transition, verdict

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


def run_pure(cfg: BreakerConfig, steps: list[Step]) -> list[str]:
    s = BreakerState()
    seen: list[str] = []
    for event, now, _ in steps:
        after = transition(s, event, now, cfg)  # type: ignore[arg-type]
        seen.append(verdict(s, after) if event == "allow" else after.state)
        s = after
    return seen


@pytest.mark.parametrize(("name", "cfg", "steps"), CASES, ids=[c[0] for c in CASES])
def test_transition_table(name: str, cfg: BreakerConfig, steps: list[Step]) -> None:
    assert run_pure(cfg, steps) == [expected for _, _, expected in steps]


def test_refused_callers_learn_when_to_ask_again() -> None:
    s = BreakerState()
    for event, now, _ in FIVE_FAILURES:
        s = transition(s, event, now, DEFAULT)  # type: ignore[arg-type]
    assert retry_at_ms(s, DEFAULT) == 4 + 30_000
    probing = transition(s, "allow", 30_004, DEFAULT)
    assert retry_at_ms(probing, DEFAULT) == 30_004 + 30_000
    assert retry_at_ms(BreakerState(), DEFAULT) is None
