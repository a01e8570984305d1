"""The limiter model (tests/oracles/limiter.py): window math with a fake clock.

The same arithmetic runs in Lua (queue/lua/_lib.lua); the integration tests
check the scripts against these properties on a real Redis.
"""

from __future__ import annotations

import bisect

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crmsync.ratelimit import RateWindow, with_pacing
from oracles.limiter import KEEP_MS, LimiterModel, Window, span_ms

# (windows, margin, [(now_ms, requested, expected_admitted, expected_next_ms)])
WINDOW_CASES = [
    (
        "burst fills, then waits until the bucket leaves the span",
        [Window(10, 1000)],
        0.0,
        [
            (0, 4, 4, 0),
            (100, 10, 6, 1004),
            (500, 1, 0, 1004),
            (1003, 1, 0, 1004),
            (1004, 3, 3, 1004),
        ],
    ),
    (
        "margin lengthens the wait",
        [Window(10, 1000)],
        0.02,
        [(0, 10, 10, 1024), (1023, 1, 0, 1024), (1024, 1, 1, 1024)],
    ),
    (
        "several windows: the tightest decides",
        [Window(3, 1000), Window(5, 10_000)],
        0.0,
        [(0, 3, 3, 1004), (1004, 3, 2, 10_040), (5000, 1, 0, 10_040), (10_040, 9, 3, 11_044)],
    ),
]


@pytest.mark.parametrize(
    ("name", "windows", "margin", "steps"), WINDOW_CASES, ids=[c[0] for c in WINDOW_CASES]
)
def test_window_math(
    name: str, windows: list[Window], margin: float, steps: list[tuple[int, int, int, int]]
) -> None:
    model = LimiterModel(windows, margin)
    got = [(now, req, *model.admit(req, now)) for now, req, _, _ in steps]
    assert got == steps


def test_refund_returns_permits_once_and_never_below_zero() -> None:
    model = LimiterModel([Window(5, 1000)], 0.0)
    assert model.admit(5, 0) == (5, 1004)
    model.refund(0, 2)
    assert model.admit(5, 10) == (2, 1004)
    model.refund(0, 99)  # more than the bucket holds: clamps at zero
    assert model.admit(9, 20) == (3, 1012)
    model.refund(-5000, 3)  # a bucket long gone: nothing happens
    assert model.admit(1, 30) == (0, 1012)


@settings(max_examples=150, deadline=None)
@given(
    limit=st.integers(1, 30),
    window_ms=st.sampled_from([100, 1000, 1700, 10_000]),
    margin=st.sampled_from([0.0, 0.02, 0.1]),
    steps=st.lists(st.tuples(st.integers(0, 400), st.integers(1, 8)), min_size=1, max_size=120),
)
def test_no_sliding_window_ever_holds_more_than_the_limit(
    limit: int, window_ms: int, margin: float, steps: list[tuple[int, int]]
) -> None:
    model = LimiterModel([Window(limit, window_ms)], margin)
    now = 1_700_000_000_000
    admitted: list[int] = []
    for gap, requested in steps:
        now += gap
        k, nxt = model.admit(requested, now)
        assert nxt >= now
        admitted += [now] * k
    for i, t in enumerate(admitted):
        # admissions in [t, t + window_ms)
        assert bisect.bisect_left(admitted, t + window_ms) - i <= limit


@settings(max_examples=150, deadline=None)
@given(
    limit=st.integers(1, 30),
    window_ms=st.sampled_from([1000, 1700, 10_000]),
    margin=st.sampled_from([0.02, 0.04, 0.1]),
    back=st.integers(0, 2 * KEEP_MS),
    steps=st.lists(st.tuples(st.integers(0, 400), st.integers(1, 8)), min_size=1, max_size=120),
)
def test_back_dated_stamps_keep_every_span_and_every_arrival_window(
    limit: int, window_ms: int, margin: float, back: int, steps: list[tuple[int, int]]
) -> None:
    """Stamped up to ``back`` ms before its claim, an admission still leaves no span
    with more than the limit; so requests sent at their claim (within ``back`` of
    their stamp) arrive at most ``limit`` per window whenever ``back`` fits in the
    margin's stretch of the window."""
    model = LimiterModel([Window(limit, window_ms)], margin)
    span = span_ms(Window(limit, window_ms), margin)
    now = 1_700_000_000_000
    stamps: list[int] = []
    arrivals: list[int] = []
    for gap, requested in steps:
        now += gap
        k, nxt = model.admit(requested, now, back)
        assert nxt >= now
        if k:
            assert now - min(back, KEEP_MS) <= model.stamp <= now
        stamps += [model.stamp] * k
        arrivals += [now] * k
    stamps.sort()
    for i, t in enumerate(stamps):
        assert bisect.bisect_left(stamps, t + span) - i <= limit
    if min(back, KEEP_MS) <= span - window_ms:
        for i, t in enumerate(arrivals):
            assert bisect.bisect_left(arrivals, t + window_ms) - i <= limit


def test_back_dating_gives_a_late_claimer_its_rate_back() -> None:
    """A claimer that always comes 8 ms after the room opened loses 8 ms of every
    pacing cycle (20 per 200 ms); stamped when the room opened it loses none."""
    windows = [Window(w.limit, w.window_ms) for w in with_pacing([RateWindow(100, 1000)])]

    def used(back: int) -> int:
        model = LimiterModel(windows, 0.0)
        now, total = 0, 0
        while now < 20_000:
            k, nxt = model.admit(20, now, back)
            total += k
            now = max(now + 1, nxt + 8)
        return total

    late, back_dated = used(0), used(10)
    assert late <= 0.97 * 2000 and back_dated >= 0.99 * 2000, (late, back_dated)


def test_limit_is_well_used_under_constant_demand() -> None:
    model = LimiterModel([Window(100, 1000)], 0.02)
    now, total = 0, 0
    while now < 10_000:
        k, nxt = model.admit(5, now)
        total += k
        now = max(now + 1, nxt)
    assert total >= 950
