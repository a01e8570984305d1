"""Strict per-account request limits of the mock CRMs, counted at arrival.

An account's limit model is one of three (``AccountSpec.model``):
``windows`` (here: any sliding windows, e.g. the seed scenario's 100/s, plus a
daily cap reset at midnight UTC), or the CRM's own (models.py: Salesforce's
rolling 24-hour allocation and concurrency cap, HubSpot's 10-second tier
window, daily limit at the portal's midnight and search rate).

Every short window is an exact sliding log of admitted arrival times (a
deque), so "100 per second" means no 1-second interval ever holds 101 admitted
requests. Alongside, every arrival (admitted or not) is logged for one second
so the stats can tell the largest number of requests seen in any sliding
second, and every refusal is a violation, counted by policy.
"""

from __future__ import annotations

import re
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

DAY_MS = 86_400_000
MAX_VIOLATION_TIMES = 20  # violations whose time is kept (stats: violations_at)
EDGE_SLACK = 1e-9  # seconds (see SlidingLog.count)


@dataclass(frozen=True, slots=True)
class Window:
    limit: int  # 0 = unlimited
    window_ms: int


# Which limit refused a request, in HubSpot's words where it has some.
TEN_SECONDLY = "TEN_SECONDLY_ROLLING"
DAILY = "DAILY"
SECONDLY = "SECONDLY"  # HubSpot's search API
CONCURRENT = "CONCURRENT"  # Salesforce's long-running requests


@dataclass(frozen=True, slots=True)
class Refusal:
    window: Window
    retry_after: float  # real seconds until the refusing window admits again
    policy: str = TEN_SECONDLY


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
class SlidingLog:
    window: Window
    seconds: float
    times: deque[float] = field(default_factory=deque)

    def count(self, now: float) -> int:
        # A nanosecond of slack: ``now - seconds`` in floats can miss an arrival exactly
        # one window old by an ulp (10.001 - 10 < 0.001), a violation no sender caused.
        edge = now - self.seconds + EDGE_SLACK
        times = self.times
        while times and times[0] <= edge:
            times.popleft()
        return len(times)

    def refusal(self, now: float, policy: str = TEN_SECONDLY) -> Refusal | None:
        """A refusal when the window is full now (the caller logs admissions)."""
        if self.count(now) < self.window.limit:
            return None
        return Refusal(self.window, max(0.0, self.times[0] + self.seconds - now), policy)


class Limits:
    """What every limit model shares: the arrival statistics and the violations.

    ``admit(now, wall)`` takes the server's monotonic time and the account's
    wall time (clock.py) and answers None (admitted) or the refusal.
    """

    model = "windows"

    def __init__(self) -> None:
        self.arrivals: deque[float] = deque()
        self.max_in_any_1s = 0
        self.violations = 0
        self.violations_at: list[float] = []  # monotonic times of the first few
        self.violations_by: Counter[str] = Counter()

    def _violate(self, now: float, refusal: Refusal) -> Refusal:
        self.violations += 1
        self.violations_by[refusal.policy] += 1
        if len(self.violations_at) < MAX_VIOLATION_TIMES:
            self.violations_at.append(now)
        return refusal

    def arrive(self, now: float) -> None:
        """Log one arrival (any request for this account) for the 1-second maximum."""
        arrivals = self.arrivals
        arrivals.append(now)
        edge = now - 1.0
        while arrivals[0] <= edge:
            arrivals.popleft()
        if len(arrivals) > self.max_in_any_1s:
            self.max_in_any_1s = len(arrivals)

    def admit(self, now: float, wall: float, search: bool = False) -> Refusal | None:
        raise NotImplementedError

    def spend(self, now: float, wall: float, n: int) -> None:
        """Other apps spend ``n`` requests of the daily budget now (not ours: no
        arrival, no violation)."""
        raise NotImplementedError

    def started(self, now: float, seconds: float) -> None:
        """An admitted request runs ``seconds`` from ``now`` (only Salesforce's cap cares)."""

    def daily(self, now: float, wall: float) -> tuple[int, int]:
        """(used, max) of the daily allocation; max 0 = none."""
        raise NotImplementedError

    def headers(self, now: float, wall: float, salesforce: bool) -> dict[str, str]:
        """The quota headers of every answer."""
        used, most = self.daily(now, wall)
        if salesforce:
            return {"Sforce-Limit-Info": f"api-usage={used}/{most}"}
        out: dict[str, str] = {}
        if most:
            out["X-HubSpot-RateLimit-Daily"] = str(most)
            out["X-HubSpot-RateLimit-Daily-Remaining"] = str(max(0, most - used))
        primary = self.primary(now)
        if primary is not None:
            window, remaining = primary
            out["X-HubSpot-RateLimit-Interval-Milliseconds"] = str(window.window_ms)
            out["X-HubSpot-RateLimit-Max"] = str(window.limit)
            out["X-HubSpot-RateLimit-Remaining"] = str(remaining)
        return out

    def primary(self, now: float) -> tuple[Window, int] | None:
        """The shortest window and how many requests it still admits now."""
        return None

    def windows_view(self) -> list[Window]:
        """The windows enforced, shortest first (the first one is the account's "limit")."""
        raise NotImplementedError

    def view(self) -> dict[str, Any]:
        """The model's settings, for ``/_control/accounts``."""
        return {"model": self.model}

    def reset_stats(self) -> None:
        self.arrivals.clear()
        self.max_in_any_1s = 0
        self.violations = 0
        self.violations_at.clear()
        self.violations_by.clear()


class AccountLimits(Limits):
    """The ``windows`` model: sliding windows plus a daily cap reset at midnight UTC."""

    def __init__(self, windows: list[Window], daily_limit: int = 0) -> None:
        super().__init__()
        self.windows = [w for w in windows if w.limit > 0]
        short = sorted((w for w in self.windows if w.window_ms < DAY_MS), key=lambda w: w.window_ms)
        self.logs = [SlidingLog(w, w.window_ms / 1000.0) for w in short]
        daily = [w.limit for w in self.windows if w.window_ms >= DAY_MS]
        self.daily_limit = min([*daily, daily_limit] if daily_limit else daily, default=0)
        self.day = -1
        self.day_count = 0

    def admit(self, now: float, wall: float, search: bool = False) -> Refusal | None:
        """Admit one request now, or tell which window refuses it (a violation)."""
        day = int(wall // 86_400)
        if day != self.day:
            self.day, self.day_count = day, 0
        if self.daily_limit and self.day_count >= self.daily_limit:
            wait = (day + 1) * 86_400 - wall
            return self._violate(now, Refusal(Window(self.daily_limit, DAY_MS), wait, DAILY))
        for log in self.logs:
            refusal = log.refusal(now)
            if refusal is not None:
                return self._violate(now, refusal)
        for log in self.logs:
            log.times.append(now)
        self.day_count += 1
        return None

    def daily(self, now: float, wall: float) -> tuple[int, int]:
        return self.day_count, self.daily_limit

    def spend(self, now: float, wall: float, n: int) -> None:
        day = int(wall // 86_400)
        if day != self.day:
            self.day, self.day_count = day, 0
        self.day_count += n

    def primary(self, now: float) -> tuple[Window, int] | None:
        if not self.logs:
            return None
        log = self.logs[0]
        return log.window, max(0, log.window.limit - log.count(now))

    def windows_view(self) -> list[Window]:
        return [log.window for log in self.logs]

    def reset_stats(self) -> None:
        super().reset_stats()
        for log in self.logs:
            log.times.clear()
        self.day_count = 0
