"""RateLimiter: how limits are spelt, and the sliding-window arithmetic its script uses.

The limiter itself runs inside the claim script (``queue/lua/_lib.lua``) so
every process and host shares one count at Redis ``TIME``; this module only
spells limits and computes the numbers the scripts are called with. Its model
lives with the tests (``tests/oracles/limiter.py``).

Window math: a window of ``window_ms`` is stretched by the margin to ``span``
and counted in buckets of ``g = window_ms // 250`` ms. At time ``t`` the count
is the sum of buckets with index >= ``floor((t - span) / g)``. Every admission
in ``(t - span, t]`` lies in such a bucket, so no sliding span (hence no
sliding window) ever holds more than the limit; the price is at most one
bucket's width of under-use.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

from crmsync.errors import UserError

BUCKETS_PER_WINDOW = 250

_UNITS_MS = {
    "ms": 1,
    "s": 1000,
    "sec": 1000,
    "second": 1000,
    "m": 60_000,
    "min": 60_000,
    "minute": 60_000,
    "h": 3_600_000,
    "hour": 3_600_000,
    "d": 86_400_000,
    "day": 86_400_000,
}
_SPEC = re.compile(r"^\s*(\d+)\s*/\s*(\d*)\s*([a-z]+)\s*$")


@dataclass(frozen=True)
class RateWindow:
    limit: int
    window_ms: int


def parse_rate_limit(spec: str) -> RateWindow:
    """ "100/s", "1000/10s", "6000/min", "100000/day" -> RateWindow."""
    m = _SPEC.fullmatch(spec.lower())
    unit: int | None = None
    if m is not None:
        name = m.group(3)
        unit = _UNITS_MS.get(name) or _UNITS_MS.get(name.removesuffix("s"))
    if m is None or unit is None:
        raise UserError(
            f"rate limit {spec!r} is not understood; write it like 100/s, 1000/10s, "
            "6000/min or 100000/day"
        )
    limit = int(m.group(1))
    window_ms = int(m.group(2) or 1) * unit
    if limit < 1 or window_ms < 1:
        raise UserError(f"rate limit {spec!r} needs a limit and a window of at least 1")
    return RateWindow(limit, window_ms)


def format_rate(w: RateWindow) -> str:
    for name, unit in (("day", 86_400_000), ("h", 3_600_000), ("min", 60_000), ("s", 1000)):
        if w.window_ms % unit == 0:
            n = w.window_ms // unit
            return f"{w.limit}/{'' if n == 1 else n}{name}"
    return f"{w.limit}/{w.window_ms}ms"


def span_ms(w: RateWindow, margin: float) -> int:
    """The window stretched by the margin, in whole ms (rounded up: safer)."""
    return math.ceil(round(w.window_ms * (1.0 + margin), 6))


MAX_REQUESTS_PER_CLAIM = 64  # a worker asks for at most this many requests per claim
PACING_BURST = 20  # at most about this many requests admitted per pacing window
PACING_PARTS = (5, 25)  # the tightest window is enforced over 1/5 .. 1/25 of it
PACING_MIN_MS = 40  # no pacing window shorter than this


def with_pacing(windows: Sequence[RateWindow]) -> tuple[RateWindow, ...]:
    """The configured windows plus a pacing window over a part of the tightest.

    A full sliding window could otherwise be taken in one burst and freed in
    one burst a window later. The CRM counts arrivals, and a burst arrives
    spread by whatever stalls the sender or the CRM (GC, a busy core), so the
    tail of one burst and the head of the next can land inside one CRM window.
    Spreading the same rate over the window, about ``PACING_BURST`` requests
    per part (5 parts at 100/s, 25 at 500/s), keeps any stall's bunching small
    enough for the margin. Never tighter on average than the window it paces.
    """
    if not windows:
        return ()
    tight = min(windows, key=lambda w: w.window_ms)
    lo, hi = PACING_PARTS
    parts = min(hi, max(lo, math.ceil(tight.limit / PACING_BURST)))
    parts = min(parts, tight.window_ms // PACING_MIN_MS)
    if parts < lo or tight.limit < 2 * lo:
        return tuple(windows)
    pace = RateWindow(math.ceil(tight.limit / parts), tight.window_ms // parts)
    if any(w.window_ms == pace.window_ms for w in windows):
        return tuple(windows)
    return (*windows, pace)


def min_room(w: RateWindow, windows: Sequence[RateWindow]) -> int:
    """Permits a connection waits for before it is claimed again: a whole pacing
    window's worth, up to what one claim can take, so each claim carries as many
    requests as pacing allows (per-claim round trips are a third of a worker's
    CPU) and a connection with a huge limit is never made to wait for room it
    could not use."""
    is_pacing = w not in windows
    return min(w.limit, MAX_REQUESTS_PER_CLAIM) if is_pacing else 1


def bucket_ms(w: RateWindow) -> int:
    return max(1, w.window_ms // BUCKETS_PER_WINDOW)


def normalize(windows: Sequence[RateWindow]) -> list[RateWindow]:
    """One window per size (the strictest limit wins), shortest first."""
    best: dict[int, int] = {}
    for w in windows:
        best[w.window_ms] = min(w.limit, best.get(w.window_ms, w.limit))
    return [RateWindow(limit, ms) for ms, limit in sorted(best.items())]


# After a Redis loss (crmsync.worker.heal) a window's admissions are unknown.
# Windows up to this long are counted full for one span: waiting that long costs
# little. Longer ones (minute, hour, day) are refilled from their PostgreSQL
# checkpoint: waiting a whole day would cost a day of work.
SHORT_WINDOW_MS = 10_000


@dataclass(frozen=True)
class Prefill:
    """How one window restarts after a loss: the checkpoint's buckets still
    counted, plus ``fill`` permits counted as taken at the heal."""

    window: RateWindow
    buckets: dict[int, int]
    fill: int


def admissible_within(w: RateWindow, windows: Sequence[RateWindow], elapsed_ms: int) -> int:
    """The most requests ``w`` may have admitted in any ``elapsed_ms``: its limit,
    or fewer where a shorter window bounds the rate (a window of L per W admits at
    most L * (ceil(elapsed / W) + 1) in any stretch of ``elapsed``)."""
    bound = w.limit
    for s in windows:
        if s.window_ms < w.window_ms:
            parts = -(-max(0, elapsed_ms) // s.window_ms) + 1
            bound = min(bound, s.limit * parts)
    return bound


def prefill(
    windows: Sequence[RateWindow],
    checkpoint: dict[int, tuple[int, dict[int, int]]],
    now_ms: int,
    margin: float,
) -> list[Prefill]:
    """Every enforced window's restart after a loss. ``checkpoint``: window_ms ->
    (Redis time of the copy, its buckets). A short window is full; a long one
    holds the checkpoint's buckets still counted at ``now_ms`` plus what it may
    have admitted since the copy (everything, without a copy), up to its limit.
    No sliding window then holds more than its limit with what was really sent."""
    out: list[Prefill] = []
    for w in windows:
        cp = checkpoint.get(w.window_ms)
        if w.window_ms <= SHORT_WINDOW_MS or cp is None:
            out.append(Prefill(w, {}, w.limit))
            continue
        taken_ms, buckets = cp
        first = (now_ms - span_ms(w, margin)) // bucket_ms(w)
        live = {i: c for i, c in buckets.items() if i >= first and c > 0}
        since = admissible_within(w, windows, now_ms - taken_ms)
        out.append(Prefill(w, live, max(0, min(w.limit - sum(live.values()), since))))
    return out
