"""The windows' restart after a Redis loss (``ratelimit.prefill``), checked against
the limiter's model (``tests/oracles/limiter.py``): a connection admitting at
full rate, its long windows copied to a checkpoint, Redis losing everything a
while later, the heal refilling the windows, full rate again. Whatever the
timing, no sliding window of what was really admitted (before the loss and
after the heal) holds more than its limit."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crmsync.ratelimit import SHORT_WINDOW_MS, RateWindow, admissible_within, prefill
from oracles.limiter import LimiterModel, Window

MARGIN = 0.04


def worst_window(log: Sequence[tuple[int, int]], window_ms: int) -> int:
    """The most admissions any sliding window ``(t - window_ms, t]`` holds."""
    worst = 0
    lo = 0
    inside = 0
    for hi in range(len(log)):
        inside += log[hi][1]
        while log[lo][0] <= log[hi][0] - window_ms:
            inside -= log[lo][1]
            lo += 1
        worst = max(worst, inside)
    return worst


def run(model: LimiterModel, start: int, end: int, step: int, log: list[tuple[int, int]]) -> None:
    """Admit as much as the model lets through every ``step`` ms in [start, end)."""
    for t in range(start, end, step):
        k, _ = model.admit(10_000, t)
        if k:
            log.append((t, k))


def restarted(
    windows: Sequence[RateWindow], model: LimiterModel, ckpt_ms: int, heal_ms: int, *, heal: bool
) -> LimiterModel:
    """The model after a loss: healed as ``prefill`` says (``heal``) or empty."""
    checkpoint = {
        bw.window.window_ms: (ckpt_ms, dict(bw.buckets))
        for bw in model.windows
        if bw.window.window_ms > SHORT_WINDOW_MS
    }
    fresh = LimiterModel([Window(w.limit, w.window_ms) for w in windows], MARGIN)
    if heal:
        fills = {f.window.window_ms: f for f in prefill(windows, checkpoint, heal_ms, MARGIN)}
        for bw in fresh.windows:
            f = fills[bw.window.window_ms]
            bw.buckets = dict(f.buckets)
            bw.take(f.fill, heal_ms)
    return fresh


def loss_scenario(
    windows: Sequence[RateWindow],
    *,
    step: int,
    ckpt_ms: int,
    lost_after: int,
    heal_after: int,
    heal: bool = True,
) -> list[tuple[int, int]]:
    """Admissions of a connection at full rate whose Redis lost its counts at
    ``ckpt_ms + lost_after`` and healed ``heal_after`` later."""
    model = LimiterModel([Window(w.limit, w.window_ms) for w in windows], MARGIN)
    log: list[tuple[int, int]] = []
    run(model, 0, ckpt_ms, step, log)
    snapshot = LimiterModel([Window(w.limit, w.window_ms) for w in windows], MARGIN)
    for bw, src in zip(snapshot.windows, model.windows, strict=True):
        src.load(ckpt_ms)
        bw.buckets = dict(src.buckets)
    lost_ms = ckpt_ms + lost_after
    run(model, ckpt_ms, lost_ms, step, log)
    heal_ms = lost_ms + heal_after
    after = restarted(windows, snapshot, ckpt_ms, heal_ms, heal=heal)
    longest = max(w.window_ms for w in windows)
    run(after, heal_ms, heal_ms + 2 * longest, step, log)
    return log


WINDOW_SETS = [
    # (short, long): the pacing-like second and a minute
    (RateWindow(20, 1000), RateWindow(300, 60_000)),
    # a HubSpot-like 10-second window and an hour
    (RateWindow(50, 10_000), RateWindow(400, 3_600_000)),
    # a long window alone (Salesforce's daily allocation, scaled down)
    (RateWindow(200, 30_000),),
]


@settings(max_examples=40, deadline=None)
@given(
    which=st.integers(0, len(WINDOW_SETS) - 1),
    step=st.sampled_from([50, 137, 400]),
    ckpt_s=st.integers(1, 90),
    lost_after=st.integers(0, 8000),
    heal_after=st.integers(0, 3000),
)
def test_no_window_over_its_limit_across_a_loss(
    which: int, step: int, ckpt_s: int, lost_after: int, heal_after: int
) -> None:
    windows = WINDOW_SETS[which]
    if max(w.window_ms for w in windows) > 100_000:
        step = max(step, 2000)  # an hour's window: coarser steps, same property
    log = loss_scenario(
        windows, step=step, ckpt_ms=ckpt_s * 1000, lost_after=lost_after, heal_after=heal_after
    )
    for w in windows:
        assert worst_window(log, w.window_ms) <= w.limit, w


def test_without_the_prefill_the_windows_burst() -> None:
    """The checker finds the burst a restart with empty windows makes (so the
    property above can fail)."""
    windows = WINDOW_SETS[0]
    # The minute's 300 were spent in its first 15 s; Redis forgets them at 16.5 s.
    log = loss_scenario(windows, step=50, ckpt_ms=16_000, lost_after=500, heal_after=0, heal=False)
    assert worst_window(log, 60_000) > 300
    # The second's 20 were spent at 3.15 s; Redis forgets them 50 ms later.
    log = loss_scenario(windows, step=50, ckpt_ms=3000, lost_after=200, heal_after=0, heal=False)
    assert worst_window(log, 1000) > 20
    # Healed, neither happens.
    for ckpt, lost in ((16_000, 500), (3000, 200)):
        log = loss_scenario(windows, step=50, ckpt_ms=ckpt, lost_after=lost, heal_after=0)
        assert worst_window(log, 60_000) <= 300
        assert worst_window(log, 1000) <= 20


def test_short_windows_restart_full_for_one_span() -> None:
    short, long = RateWindow(100, 1000), RateWindow(10_000, 86_400_000)
    fills = prefill([short, long], {}, 1_000_000, MARGIN)
    assert [(f.window, f.fill, f.buckets) for f in fills] == [
        (short, 100, {}),
        (long, 10_000, {}),  # no checkpoint: assume the worst
    ]


def test_long_window_restarts_from_its_checkpoint() -> None:
    """The checkpoint's buckets still counted stay where they were; what the
    window may have admitted since the copy (bounded by the 100/s window) is
    counted at the heal."""
    short, day = RateWindow(100, 1000), RateWindow(100_000, 86_400_000)
    g = 86_400_000 // 250
    now = 10 * 86_400_000
    gone = (now - 2 * 86_400_000) // g  # left the window long ago
    live = now // g - 3
    checkpoint = {day.window_ms: (now - 2500, {gone: 50, live: 7000})}
    fills = prefill([short, day], checkpoint, now, MARGIN)
    assert fills[1].buckets == {live: 7000}
    assert fills[1].fill == 100 * (3 + 1)  # 2.5 s at 100/s, rounded up, plus one window


def test_long_window_fill_never_exceeds_its_limit() -> None:
    day = RateWindow(1000, 86_400_000)
    g = 86_400_000 // 250
    now = 5 * 86_400_000
    fills = prefill([day], {day.window_ms: (now - 10, {now // g: 990})}, now, MARGIN)
    assert fills[0].fill == 10


@pytest.mark.parametrize(
    ("elapsed", "expected"),
    [(0, 100), (1, 200), (1000, 200), (1001, 300), (10**9, 1000)],
)
def test_admissible_within_is_bounded_by_the_shorter_windows(elapsed: int, expected: int) -> None:
    windows = [RateWindow(100, 1000), RateWindow(1000, 60_000)]
    assert admissible_within(windows[1], windows, elapsed) == expected
