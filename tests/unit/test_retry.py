"""Retry policy: full-jitter delays, attempt counting, settings; a fake clock, no sleeping."""

from __future__ import annotations

import pytest

from crmsync.clock import FakeClock
from crmsync.retry import RetryPolicy
from crmsync.settings import Settings


@pytest.mark.parametrize(
    ("policy", "attempt", "rand", "expected"),
    [
        (RetryPolicy(), 1, 1.0, 1.0),
        (RetryPolicy(), 2, 1.0, 2.0),
        (RetryPolicy(), 3, 1.0, 4.0),
        (RetryPolicy(), 6, 1.0, 32.0),
        (RetryPolicy(), 7, 1.0, 60.0),  # 64 capped
        (RetryPolicy(), 50, 1.0, 60.0),
        (RetryPolicy(), 5000, 1.0, 60.0),  # no float overflow
        (RetryPolicy(), 3, 0.5, 2.0),
        (RetryPolicy(), 3, 0.0, 0.0),
        (RetryPolicy(base=0.25, cap=5.0), 1, 1.0, 0.25),
        (RetryPolicy(base=0.25, cap=5.0), 5, 1.0, 4.0),
        (RetryPolicy(base=0.25, cap=5.0), 6, 0.5, 2.5),
        (RetryPolicy(base=10.0, cap=3.0), 1, 1.0, 3.0),
    ],
)
def test_delay_is_full_jitter(
    policy: RetryPolicy, attempt: int, rand: float, expected: float
) -> None:
    assert policy.delay(attempt, rand=lambda: rand) == pytest.approx(expected)


def test_delay_stays_in_jitter_range_with_real_randomness() -> None:
    policy = RetryPolicy()
    delays = [policy.delay(4) for _ in range(500)]
    assert all(0.0 <= d <= 8.0 for d in delays)
    # Full jitter: spread over the whole range, not bunched near the ceiling.
    assert min(delays) < 2.0 < 6.0 < max(delays)


@pytest.mark.parametrize(
    ("attempts", "done", "exhausted"),
    [
        (3, 0, False),
        (3, 1, False),
        (3, 2, False),
        (3, 3, True),
        (3, 4, True),
        (1, 1, True),
        (5, 4, False),
    ],
)
def test_exhausted(attempts: int, done: int, exhausted: bool) -> None:
    assert RetryPolicy(attempts=attempts).exhausted(done) is exhausted


@pytest.mark.parametrize("kwargs", [{"attempts": 0}, {"base": 0.0}, {"cap": -1.0}])
def test_invalid_policy_names_the_setting(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="CRMSYNC_RETRY_"):
        RetryPolicy(**kwargs)  # type: ignore[arg-type]


def test_attempt_numbers_start_at_one() -> None:
    with pytest.raises(ValueError, match="start at 1"):
        RetryPolicy().delay(0)


def test_from_settings() -> None:
    s = Settings(retry_attempts=5, retry_base_seconds=0.5, retry_cap_seconds=10.0)
    assert RetryPolicy.from_settings(s) == RetryPolicy(attempts=5, base=0.5, cap=10.0)
    assert RetryPolicy.from_settings(Settings()) == RetryPolicy(3, 1.0, 60.0)


# A send loop as the worker runs it, on a fake clock: each outcome is what the
# CRM (or the limiter in front of it) answered to one try.
def _simulate(policy: RetryPolicy, outcomes: list[str], clock: FakeClock) -> tuple[str, int]:
    attempts = 0
    for outcome in outcomes:
        if outcome == "rate_limited" or outcome == "circuit_open":
            clock.advance(5.0)  # waiting for room is not an attempt
            continue
        if outcome == "ok":
            return "synced", attempts
        if outcome == "permanent":
            return "dead", attempts + 1
        attempts += 1
        if policy.exhausted(attempts):
            return "dead", attempts
        clock.advance(policy.delay(attempts, rand=lambda: 1.0))
    return "pending", attempts


@pytest.mark.parametrize(
    ("outcomes", "result", "attempts", "waited"),
    [
        (["ok"], "synced", 0, 0.0),
        (["5xx", "ok"], "synced", 1, 1.0),
        (["5xx", "5xx", "ok"], "synced", 2, 3.0),
        (["5xx", "5xx", "5xx", "ok"], "dead", 3, 3.0),
        (["permanent"], "dead", 1, 0.0),
        (["rate_limited", "rate_limited", "5xx", "circuit_open", "5xx", "ok"], "synced", 2, 18.0),
        (["timeout", "rate_limited", "timeout", "timeout"], "dead", 3, 8.0),
    ],
)
def test_attempt_counting_on_a_fake_clock(
    outcomes: list[str], result: str, attempts: int, waited: float
) -> None:
    clock = FakeClock()
    start = clock()
    assert _simulate(RetryPolicy(), outcomes, clock) == (result, attempts)
    assert clock() - start == pytest.approx(waited)
