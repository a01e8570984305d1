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
