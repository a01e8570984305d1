"""The CRMs' own limit models (``AccountSpec.model = "crm"``), enforced exactly.

Salesforce (per org): no per-second limit. A rolling 24-hour request
allocation: a request is admitted while fewer than ``allocation`` requests were
admitted in the 24 hours before it (``Sforce-Limit-Info: api-usage=used/max``
on every answer; ``/limits`` reports ``DailyApiRequests``); over it, 403
``REQUEST_LIMIT_EXCEEDED`` without ``Retry-After``. And at most ``concurrency``
(25) requests that have been running for ``long_running_ms`` (20 s) or more:
while that many are in flight, a new request is refused the same way.

HubSpot (per portal): a sliding 10-second window of ``burst`` requests (the
tier: 100, 190 or 250), a daily limit that resets at midnight in the portal's
time zone, and the search API at ``search_per_second`` (5) requests per second,
its own window (search requests also count toward the day, not toward the
10-second window). Refusals are 429 with ``policyName`` TEN_SECONDLY_ROLLING,
DAILY or SECONDLY; every answer carries ``X-HubSpot-RateLimit-*``.

Daily windows run on the account's clock (clock.py: a day can last 20 s in a
test); short windows and the concurrency cap on real time.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from crmsync_lab.mock.clock import DAY_S, AccountClock, LocalDays, zone
from crmsync_lab.mock.limits import (
    CONCURRENT,
    DAILY,
    DAY_MS,
    SECONDLY,
    TEN_SECONDLY,
    Limits,
    Refusal,
    SlidingLog,
    Window,
)

# HubSpot tiers: (requests per 10 s, requests per day).
TIERS: dict[str, tuple[int, int]] = {
    "free": (100, 250_000),
    "starter": (100, 250_000),
    "professional": (190, 650_000),
    "enterprise": (190, 1_000_000),
    "capacity": (250, 1_650_000),  # professional with the API limit increase pack
}
TIER_BY_BURST = {100: "starter", 190: "professional", 250: "capacity"}


def tier(spec: str | int) -> tuple[int, int]:
    """A tier by name or by its 10-second limit; a ValueError names the spelling."""
    text = str(spec).strip().lower()
    if text.isdigit() and int(text) in TIER_BY_BURST:
        return TIERS[TIER_BY_BURST[int(text)]]
    if text in TIERS:
        return TIERS[text]
    raise ValueError(
        f"tier {spec!r} is not a HubSpot tier; use 100, 190 or 250 (requests per 10 s) "
        f"or one of {', '.join(TIERS)}"
    )


class RollingCount:
    """Admissions in the last ``span`` seconds, counted per millisecond (exact to 1 ms,
    and small: a day at thousands per second keeps one entry per busy millisecond)."""

    __slots__ = ("buckets", "span_ms", "total")

    def __init__(self, span: float) -> None:
        self.span_ms = round(span * 1000)
        self.buckets: deque[list[int]] = deque()  # [ms, count], oldest first
        self.total = 0

    def count(self, t: float) -> int:
        edge = round(t * 1000) - self.span_ms
        buckets = self.buckets
        while buckets and buckets[0][0] <= edge:
            self.total -= buckets.popleft()[1]
        return self.total

    def add(self, t: float, n: int = 1) -> None:
        ms = round(t * 1000)
        if self.buckets and self.buckets[-1][0] == ms:
            self.buckets[-1][1] += n
        else:
            self.buckets.append([ms, n])
        self.total += n

    def frees_at(self) -> float:
        """When the oldest admission leaves the window (seconds, this count's clock)."""
        return (self.buckets[0][0] + self.span_ms) / 1000.0 if self.buckets else 0.0

    def clear(self) -> None:
        self.buckets.clear()
        self.total = 0


class SalesforceLimits(Limits):
    model = "salesforce"

    def __init__(
        self,
        allocation: int,
        clock: AccountClock,
        *,
        concurrency: int = 25,
        long_running_ms: int = 20_000,
    ) -> None:
        super().__init__()
        if allocation < 1 or concurrency < 1 or long_running_ms < 1:
            raise ValueError("daily_limit, concurrency and long_running_ms must be at least 1")
        self.allocation = allocation
        self.clock = clock
        self.used = RollingCount(DAY_S)  # on the account's clock
        self.concurrency = concurrency
        self.long_s = long_running_ms / 1000.0
        self.running: list[tuple[float, float]] = []  # (start, end) of long requests

    def admit(self, now: float, wall: float, search: bool = False) -> Refusal | None:
        if self.running:
            self.running = [r for r in self.running if r[1] > now]
            long = [r for r in self.running if r[0] <= now - self.long_s]
            if len(long) >= self.concurrency:
                wait = min(r[1] for r in long) - now
                window = Window(self.concurrency, round(self.long_s * 1000))
                return self._violate(now, Refusal(window, wait, CONCURRENT))
        if self.used.count(wall) >= self.allocation:
            wait = self.clock.real(self.used.frees_at() - wall)
            return self._violate(now, Refusal(Window(self.allocation, DAY_MS), wait, DAILY))
        self.used.add(wall)
        return None

    def spend(self, now: float, wall: float, n: int) -> None:
        self.used.count(wall)
        self.used.add(wall, n)

    def started(self, now: float, seconds: float) -> None:
        if seconds >= self.long_s:  # only these can ever be long-running
            self.running.append((now, now + seconds))

    def daily(self, now: float, wall: float) -> tuple[int, int]:
        return self.used.count(wall), self.allocation

    def windows_view(self) -> list[Window]:
        return [Window(self.allocation, DAY_MS)]

    def view(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "daily_limit": self.allocation,
            "concurrency": self.concurrency,
            "long_running_ms": round(self.long_s * 1000),
        }

    def reset_stats(self) -> None:
        super().reset_stats()
        self.used.clear()
        self.running.clear()


class HubSpotLimits(Limits):
    model = "hubspot"

    def __init__(
        self,
        burst: int,
        daily_limit: int,
        clock: AccountClock,
        *,
        time_zone: str = "UTC",
        search_per_second: int = 5,
    ) -> None:
        super().__init__()
        if burst < 1 or daily_limit < 1 or search_per_second < 1:
            raise ValueError("tier, daily_limit and search_per_second must be at least 1")
        self.ten = SlidingLog(Window(burst, 10_000), 10.0)
        self.search = SlidingLog(Window(search_per_second, 1000), 1.0)
        self.daily_limit = daily_limit
        self.clock = clock
        self.time_zone = time_zone
        self.days = LocalDays(zone(time_zone))
        self.day_count = 0

    def _today(self, wall: float) -> int:
        if self.days.roll(wall):
            self.day_count = 0
        return self.day_count

    def admit(self, now: float, wall: float, search: bool = False) -> Refusal | None:
        if self._today(wall) >= self.daily_limit:
            wait = self.clock.real(self.days.next_midnight - wall)
            return self._violate(now, Refusal(Window(self.daily_limit, DAY_MS), wait, DAILY))
        log = self.search if search else self.ten
        refusal = log.refusal(now, SECONDLY if search else TEN_SECONDLY)
        if refusal is not None:
            return self._violate(now, refusal)
        log.times.append(now)
        self.day_count += 1
        return None

    def daily(self, now: float, wall: float) -> tuple[int, int]:
        return self._today(wall), self.daily_limit

    def spend(self, now: float, wall: float, n: int) -> None:
        self._today(wall)
        self.day_count += n

    def primary(self, now: float) -> tuple[Window, int] | None:
        return self.ten.window, max(0, self.ten.window.limit - self.ten.count(now))

    def windows_view(self) -> list[Window]:
        return [self.ten.window, Window(self.daily_limit, DAY_MS)]

    def view(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "tier": self.ten.window.limit,
            "daily_limit": self.daily_limit,
            "time_zone": self.time_zone,
            "search_per_second": self.search.window.limit,
        }

    def reset_stats(self) -> None:
        super().reset_stats()
        self.ten.times.clear()
        self.search.times.clear()
        self.day_count = 0
