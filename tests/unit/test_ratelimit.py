"""Rate-limit spelling and window math (fake clock)."""

from __future__ import annotations

import pytest

from crmsync.errors import UserError
from crmsync.ratelimit import (
    RateWindow,
    format_rate,
    min_room,
    normalize,
    parse_rate_limit,
    span_ms,
    with_pacing,
)


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("100/s", RateWindow(100, 1000)),
        ("1000/10s", RateWindow(1000, 10_000)),
        ("100000/day", RateWindow(100_000, 86_400_000)),
        ("6000/min", RateWindow(6000, 60_000)),
        ("50/500ms", RateWindow(50, 500)),
        (" 10 / 2 hours ", RateWindow(10, 7_200_000)),
        ("15000/d", RateWindow(15000, 86_400_000)),
    ],
)
def test_parse_rate_limit(spec: str, expected: RateWindow) -> None:
    assert parse_rate_limit(spec) == expected
    assert parse_rate_limit(format_rate(expected)) == expected


@pytest.mark.parametrize("spec", ["", "100", "100/", "0/s", "100/0s", "x/s", "100/fortnight"])
def test_parse_rate_limit_rejects(spec: str) -> None:
    with pytest.raises(UserError, match="rate limit"):
        parse_rate_limit(spec)


def test_margin_stretches_the_window_and_normalize_keeps_the_strictest() -> None:
    assert span_ms(RateWindow(100, 1000), 0.02) == 1020
    assert span_ms(RateWindow(100, 1000), 0.0) == 1000
    assert normalize([RateWindow(5, 1000), RateWindow(100, 10_000), RateWindow(3, 1000)]) == [
        RateWindow(3, 1000),
        RateWindow(100, 10_000),
    ]


def test_pacing_window_spreads_the_tightest_window() -> None:
    sec, day = RateWindow(100, 1000), RateWindow(100_000, 86_400_000)
    enforced = with_pacing([sec, day])
    assert enforced == (sec, day, RateWindow(20, 200))
    assert min_room(RateWindow(20, 200), [sec, day]) == 20
    assert min_room(sec, [sec, day]) == 1
    # A huge limit: wait only for what one claim can take, never for the window.
    huge = with_pacing([RateWindow(1_000_000, 1000)])[-1]
    assert min_room(huge, [RateWindow(1_000_000, 1000)]) == 64
    # Never tighter on average than the window it paces (ceil of the share).
    assert with_pacing([RateWindow(52, 1000)])[-1] == RateWindow(11, 200)
    # Higher rates are paced finer: about 20 per part, up to 25 parts.
    assert with_pacing([RateWindow(500, 1000)])[-1] == RateWindow(20, 40)
    assert with_pacing([RateWindow(5000, 1000)])[-1] == RateWindow(200, 40)
    # Tiny limits or windows are left alone.
    assert with_pacing([RateWindow(5, 1000)]) == (RateWindow(5, 1000),)
    assert with_pacing([RateWindow(100, 100)]) == (RateWindow(100, 100),)
    assert with_pacing([]) == ()
