"""The breaker oracle follows its own table (tests/oracles/breaker.py).

The same CASES run against the Lua breaker in
tests/integration/test_breaker_redis.py.
"""

from __future__ import annotations

import pytest

from oracles.breaker import (
    CASES,
    DEFAULT,
    FIVE_FAILURES,
    BreakerConfig,
    BreakerState,
    Step,
    retry_at_ms,
    transition,
    verdict,
)


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
