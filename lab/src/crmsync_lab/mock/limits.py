"""Strict per-account request limits of the mock CRMs, counted at arrival.

Every window is an exact sliding log of admitted arrival times (a deque), so
"100 per second" means no 1-second interval ever holds 101 admitted requests.
Daily windows are a counter that resets at midnight UTC, as HubSpot's does.
Alongside, every arrival (admitted or not) is logged for one second so the
stats can tell the largest number of requests seen in any sliding second.
"""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass, field

DAY_MS = 86_400_000
MAX_VIOLATION_TIMES = 20  # violations whose time is kept (stats: violations_at)


@dataclass(frozen=True, slots=True)
class Window:
    limit: int  # 0 = unlimited
    window_ms: int


@dataclass(frozen=True, slots=True)
class Refusal:
    window: Window
    retry_after: float  # seconds until the oldest admitted request leaves the window


# Written apart from crmsync's parser (the mock checks crmsync, so it shares no
# code with it); a test holds the two to the same spellings.
_LIMIT = re.compile(r"(\d+)\s*/\s*(\d*)\s*([a-z]+)")
_UNIT_MS = {
    **dict.fromkeys(("ms",), 1),
    **dict.fromkeys(("s", "sec", "second"), 1000),
    **dict.fromkeys(("m", "min", "minute"), 60_000),
    **dict.fromkeys(("h", "hour"), 3_600_000),
    **dict.fromkeys(("d", "day"), DAY_MS),
}


def parse_limit(spec: str) -> Window:
    """``100/s``, ``1000/10s``, ``6000/min``, ``250000/day`` (units may take a
    plural s), or ``0`` / ``none`` / ``unlimited`` = no limit. A ValueError
    names the spelling it cannot read."""
    text = spec.strip().lower()
    if text in ("0", "", "none", "unlimited"):
        return Window(0, 1000)
    m = _LIMIT.fullmatch(text)
    unit = None
    if m is not None:
        unit = _UNIT_MS.get(m.group(3))
        if unit is None and m.group(3).endswith("s"):
            unit = _UNIT_MS.get(m.group(3)[:-1])
    if m is None or unit is None:
        raise ValueError(
            f"limit {spec!r} is not a count per window; write it like 100/s, 1000/10s, "
            "6000/min, 250000/day, or 0 for none"
        )
    limit, window_ms = int(m.group(1)), int(m.group(2) or 1) * unit
    if limit < 1 or window_ms < 1:
        raise ValueError(f"limit {spec!r} needs a count and a window of at least 1")
    return Window(limit, window_ms)


@dataclass(slots=True)
class _Log:
    window: Window
    seconds: float
    times: deque[float] = field(default_factory=deque)

    def count(self, now: float) -> int:
        edge = now - self.seconds
        times = self.times
        while times and times[0] <= edge:
            times.popleft()
        return len(times)


class AccountLimits:
    """The windows of one account plus the arrival statistics."""

    def __init__(self, windows: list[Window], daily_limit: int = 0) -> None:
        self.windows = [w for w in windows if w.limit > 0]
        short = sorted((w for w in self.windows if w.window_ms < DAY_MS), key=lambda w: w.window_ms)
        self.logs = [_Log(w, w.window_ms / 1000.0) for w in short]
        daily = [w.limit for w in self.windows if w.window_ms >= DAY_MS]
        self.daily_limit = min([*daily, daily_limit] if daily_limit else daily, default=0)
        self.day = -1
        self.day_count = 0
        self.arrivals: deque[float] = deque()
        self.max_in_any_1s = 0
        self.violations = 0
        self.violations_at: list[float] = []  # monotonic times of the first few

    def _violate(self, now: float) -> None:
        self.violations += 1
        if len(self.violations_at) < MAX_VIOLATION_TIMES:
            self.violations_at.append(now)

    def arrive(self, now: float) -> None:
        """Log one arrival (any request for this account) for the 1-second maximum."""
        arrivals = self.arrivals
        arrivals.append(now)
        edge = now - 1.0
        while arrivals[0] <= edge:
            arrivals.popleft()
        if len(arrivals) > self.max_in_any_1s:
            self.max_in_any_1s = len(arrivals)

    def admit(self, now: float, wall: float) -> Refusal | None:
        """Admit one request now, or tell which window refuses it (a violation)."""
        day = int(wall // 86_400)
        if day != self.day:
            self.day, self.day_count = day, 0
        if self.daily_limit and self.day_count >= self.daily_limit:
            self._violate(now)
            return Refusal(Window(self.daily_limit, DAY_MS), (day + 1) * 86_400 - wall)
        for log in self.logs:
            if log.count(now) >= log.window.limit:
                self._violate(now)
                return Refusal(log.window, max(0.0, log.times[0] + log.seconds - now))
        for log in self.logs:
            log.times.append(now)
        self.day_count += 1
        return None

    def primary(self, now: float) -> tuple[Window, int] | None:
        """The shortest window and how many requests it still admits now."""
        if not self.logs:
            return None
        log = self.logs[0]
        return log.window, max(0, log.window.limit - log.count(now))

    def reset_stats(self) -> None:
        self.arrivals.clear()
        self.max_in_any_1s = 0
        self.violations = 0
        self.violations_at.clear()
        for log in self.logs:
            log.times.clear()
        self.day_count = 0
