"""The limiter's sliding windows, as a model the tests check the Lua scripts against.

Written apart from crmsync's code (an oracle never imports what it checks):
a window of ``window_ms`` is stretched by the margin to ``span`` and counted
in buckets of ``window_ms // 250`` ms; at time ``t`` the count is the sum of
the buckets with index >= ``floor((t - span) / g)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo


@dataclass(frozen=True)
class Window:
    limit: int
    window_ms: int


def bucket_ms(w: Window) -> int:
    return max(1, w.window_ms // 250)


def span_ms(w: Window, margin: float) -> int:
    return math.ceil(round(w.window_ms * (1.0 + margin), 6))


def strictest(windows: Sequence[Window]) -> list[Window]:
    best: dict[int, int] = {}
    for w in windows:
        best[w.window_ms] = min(w.limit, best.get(w.window_ms, w.limit))
    return [Window(limit, ms) for ms, limit in sorted(best.items())]


KEEP_MS = 32  # how far back a late claim may be stamped (KEEP_MS in _lib.lua)


@dataclass
class BucketWindow:
    """In-memory twin of one window hash of the claim script. ``buckets`` keeps
    those counted now and those that left the span less than ``KEEP_MS`` ago
    (for back-dating); ``count(t)`` is what a stamp at ``t`` would see."""

    window: Window
    span: int
    buckets: dict[int, int] = field(default_factory=dict)
    lo: int | None = None

    @property
    def g(self) -> int:
        return bucket_ms(self.window)

    def load(self, now: int) -> None:
        keep = (now - self.span - KEEP_MS) // self.g
        if self.lo is None or self.lo < keep:
            for idx in [i for i in self.buckets if i < keep]:
                del self.buckets[idx]
            self.lo = keep

    def count(self, t: int) -> int:
        """Admissions counted at ``t``: every bucket from (t - span) on."""
        first = (t - self.span) // self.g
        return sum(c for i, c in self.buckets.items() if i >= first)

    def room(self, now: int) -> int:
        self.load(now)
        return self.window.limit - self.count(now)

    def take(self, k: int, at: int) -> None:
        if k > 0:
            idx = at // self.g
            self.buckets[idx] = self.buckets.get(idx, 0) + k

    def refund(self, admitted_ms: int, n: int) -> None:
        idx = admitted_ms // self.g
        if self.lo is None or idx < self.lo or idx not in self.buckets:
            return
        self.buckets[idx] -= min(self.buckets[idx], n)
        if self.buckets[idx] == 0:
            del self.buckets[idx]

    def since(self, t0: int, k: int, now: int) -> int:
        """Earliest t in [t0, now] at which ``k`` more fit (k must fit at now)."""
        if self.count(t0) + k <= self.window.limit:
            return t0
        for idx in sorted(i for i in self.buckets if i >= (t0 - self.span) // self.g):
            t = (idx + 1) * self.g + self.span
            if self.count(t) + k <= self.window.limit:
                return max(t0, t)
        return now  # unreachable while k fits at now

    def next_room(self, now: int) -> int:
        """Earliest ms at which one more request fits (``now`` if it fits now)."""
        self.load(now)
        excess = self.count(now) - (self.window.limit - 1)
        if excess <= 0:
            return now
        freed = 0
        for idx in sorted(i for i in self.buckets if i >= (now - self.span) // self.g):
            freed += self.buckets[idx]
            if freed >= excess:
                return (idx + 1) * self.g + self.span
        return now + self.span  # unreachable


class LimiterModel:
    """Several windows admitted together, as the claim script does."""

    def __init__(self, windows: Sequence[Window], margin: float) -> None:
        self.windows = [BucketWindow(w, span_ms(w, margin)) for w in strictest(windows)]
        self.stamp = 0  # the last admission's stamp

    def admit(self, requested: int, now: int, back: int = 0) -> tuple[int, int]:
        """Admit up to ``requested`` at ``now``, stamped as early as ``back`` ms
        before it when the room was there then (``stamp``); returns (admitted,
        next ms with room)."""
        room = min([requested, *(w.room(now) for w in self.windows)])
        k = max(0, room)
        stamp = now
        back = min(back, KEEP_MS)
        if k > 0 and back > 0 and self.windows:
            stamp = max(w.since(now - back, k, now) for w in self.windows)
        for w in self.windows:
            w.take(k, stamp)
        self.stamp = stamp
        return k, max([now, *(w.next_room(now) for w in self.windows)])

    def refund(self, admitted_ms: int, n: int) -> None:
        for w in self.windows:
            w.refund(admitted_ms, n)


# -- The CRMs' own models (crm_limits.py, crm_* in _lib.lua), written apart ------------


def portal_days(t_ms: int, zone: str, day_ms: int = 86_400_000) -> tuple[int, int]:
    """[start, end) of the portal's day holding ``t_ms``: local midnight to local
    midnight (a real day), or a run of equal compressed days shifted by the zone's
    offset scaled into them."""
    tz = ZoneInfo(zone)
    if day_ms != 86_400_000:
        off = datetime.fromtimestamp(t_ms / 1000, tz).utcoffset()
        shift = round((off.total_seconds() if off else 0.0) * 1000 * day_ms / 86_400_000)
        start = (t_ms + shift) // day_ms * day_ms - shift
        return start, start + day_ms
    d = datetime.fromtimestamp(t_ms / 1000, tz).date()
    for day in (d - timedelta(days=1), d, d + timedelta(days=1)):
        a = datetime(day.year, day.month, day.day, tzinfo=tz).timestamp() * 1000
        nxt = day + timedelta(days=1)
        b = datetime(nxt.year, nxt.month, nxt.day, tzinfo=tz).timestamp() * 1000
        if a <= t_ms < b:
            return round(a), round(b)
    raise AssertionError("no local day holds the time")


@dataclass
class DailyBudget:
    """HubSpot: our admissions since the portal's midnight (used ``guard`` ms late)
    plus the other apps' use learnt in that day, kept under the limit less the
    reserve. ``learn(used, ref, now)``: the CRM counted ``used`` when our
    admissions numbered ``ref``."""

    limit: int
    reserve: float
    zone: str = "UTC"
    day_ms: int = 86_400_000
    guard: int = 0
    day: int | None = None
    n: int = 0
    others: int = 0
    seq: int = 0
    day_ref: int = 0

    def _roll(self, now: int) -> None:
        start, _ = portal_days(now - self.guard, self.zone, self.day_ms)
        if self.day is None or start > self.day:
            self.day, self.n, self.others, self.day_ref = start, 0, 0, self.seq

    def room(self, now: int) -> int:
        self._roll(now)
        return self.limit - math.ceil(self.limit * self.reserve) - self.n - self.others

    def admit(self, k: int, now: int) -> int:
        got = max(0, min(k, self.room(now)))
        self.n += got
        self.seq += got
        return got

    def learn(self, used: int, ref: int, now: int) -> None:
        self._roll(now)
        if ref < self.day_ref:
            return
        ours = max(0, self.n - (self.seq - ref))
        self.others = max(self.others, used - ours)


@dataclass
class RollingBudget:
    """Salesforce: the CRM's used count at the latest request it answered, plus our
    admissions since, kept under the allocation less the reserve; until a first
    answer, one request at a time."""

    allocation: int
    reserve: float
    seq: int = 0
    used: int | None = None
    ref: int = 0

    def room(self) -> int:
        if self.used is None:
            return 1
        limit = self.allocation - math.ceil(self.allocation * self.reserve)
        return limit - (self.used + self.seq - self.ref)

    def admit(self, k: int) -> int:
        got = max(0, min(k, self.room()))
        self.seq += got
        return got

    def learn(self, used: int, ref: int) -> None:
        if self.used is None or ref > self.ref or (ref == self.ref and used > self.used):
            self.used, self.ref = used, ref


@dataclass
class InFlightCap:
    """At most ``cap`` requests of unfinished claims at once."""

    cap: int
    claims: dict[str, int] = field(default_factory=dict)

    def admit(self, token: str, k: int) -> int:
        got = max(0, min(k, self.cap - sum(self.claims.values())))
        if got:
            self.claims[token] = got
        return got

    def done(self, token: str) -> None:
        self.claims.pop(token, None)
