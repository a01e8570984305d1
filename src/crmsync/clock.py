"""The one seam for time in Python code (Lua scripts use Redis TIME)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable


def now() -> float:
    """Wall-clock seconds since the epoch."""
    return time.time()


def monotonic() -> float:
    return time.monotonic()


class FakeClock:
    """A clock tests move by hand instead of sleeping."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self.t = start

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


class RedisClock:
    """Milliseconds on Redis's clock, read locally.

    Rate-limit admissions and ``next_eligible_ms`` are Redis ``TIME``; a worker
    compares them with its own clock (when to claim again, how late a send is).
    On the Redis host the two agree; a worker on another host may be off by its
    clock's skew, which would make every send look late (readmits, restamps) or
    hide real lateness. Each claim's answer carries Redis's time: the offset is
    taken from the answer with the shortest round trip (its midpoint is the best
    guess of when Redis read the clock), and re-learnt after ``renew_ms``.
    """

    def __init__(self, wall: Callable[[], float] = time.time, renew_ms: float = 10_000.0) -> None:
        self.wall = wall
        self.renew_ms = renew_ms
        self.offset_ms = 0.0
        self.best_rtt_ms = math.inf
        self.learnt_at = -math.inf

    def local_ms(self) -> float:
        return self.wall() * 1000.0

    def now_ms(self) -> float:
        return self.wall() * 1000.0 + self.offset_ms

    def observe(self, redis_ms: float, sent_ms: float, received_ms: float) -> None:
        """One answer: Redis read its clock (whole ms) between ``sent_ms`` and
        ``received_ms`` of the local clock."""
        rtt = max(0.0, received_ms - sent_ms)
        if rtt > self.best_rtt_ms and received_ms - self.learnt_at < self.renew_ms:
            return
        self.best_rtt_ms = rtt
        self.learnt_at = received_ms
        self.offset_ms = (redis_ms + 0.5) - (sent_ms + received_ms) / 2.0
