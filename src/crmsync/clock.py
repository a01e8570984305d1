"""The one seam for time in Python code (Lua scripts use Redis TIME).

``now()`` and ``monotonic()`` serve code that only needs the time of day or a
duration. The worker takes a ``Clock`` instead: Redis time as this process best
knows it (rate-limit admissions and ``next_eligible_ms`` are Redis ``TIME``), a
monotonic clock for durations and deadlines, and sleeping. ``RedisClock`` is the
real one; ``FakeClock`` is moved by tests by hand, and its sleepers wake only
when a test moves it past their time, so tests never sleep.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
import time
from collections.abc import Callable
from typing import Protocol


def now() -> float:
    """Wall-clock seconds since the epoch."""
    return time.time()


def monotonic() -> float:
    return time.monotonic()


class Clock(Protocol):
    """What the worker asks of time."""

    def now_ms(self) -> float:
        """Redis time in milliseconds, as this process best knows it."""
        ...

    def local_ms(self) -> float:
        """This host's wall clock in milliseconds."""
        ...

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back, for durations and deadlines."""
        ...

    def observe(self, redis_ms: float, sent_ms: float, received_ms: float) -> None:
        """An answer from Redis carried its time ``redis_ms``; it was asked at
        ``sent_ms`` and answered at ``received_ms`` of ``local_ms``."""
        ...

    async def sleep(self, seconds: float) -> None: ...


class RedisClock:
    """Milliseconds on Redis's clock, read locally.

    A worker compares Redis times with its own clock (when to claim again, how
    late a send is). On the Redis host the two agree; a worker on another host
    may be off by its clock's skew, which would make every send look late
    (readmits, restamps) or hide real lateness. Each claim's answer carries
    Redis's time: the offset is taken from the answer with the shortest round
    trip (its midpoint is the best guess of when Redis read the clock), and
    re-learnt after ``renew_ms``.
    """

    def __init__(
        self,
        wall: Callable[[], float] = time.time,
        renew_ms: float = 10_000.0,
        ticks: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.wall = wall
        self.ticks = ticks
        self.renew_ms = renew_ms
        self.offset_ms = 0.0
        self.best_rtt_ms = math.inf
        self.learnt_at = -math.inf

    def local_ms(self) -> float:
        return self.wall() * 1000.0

    def now_ms(self) -> float:
        return self.wall() * 1000.0 + self.offset_ms

    def monotonic(self) -> float:
        return self.ticks()

    def observe(self, redis_ms: float, sent_ms: float, received_ms: float) -> None:
        """One answer: Redis read its clock (whole ms) between ``sent_ms`` and
        ``received_ms`` of the local clock."""
        rtt = max(0.0, received_ms - sent_ms)
        if rtt > self.best_rtt_ms and received_ms - self.learnt_at < self.renew_ms:
            return
        self.best_rtt_ms = rtt
        self.learnt_at = received_ms
        self.offset_ms = (redis_ms + 0.5) - (sent_ms + received_ms) / 2.0

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class FakeClock:
    """A clock tests move by hand instead of sleeping.

    Called, it is a wall clock (seconds), so it can stand in for ``time.time``.
    As a ``Clock`` it is Redis's clock too (no offset): a ``sleep`` returns
    once ``advance`` moved the time past its end.
    """

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self.t = start
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds
        while self._sleepers and self._sleepers[0][0] <= self.t:
            _, _, fut = heapq.heappop(self._sleepers)
            if not fut.done():
                fut.set_result(None)

    def now_ms(self) -> float:
        return self.t * 1000.0

    def local_ms(self) -> float:
        return self.t * 1000.0

    def monotonic(self) -> float:
        return self.t

    def observe(self, redis_ms: float, sent_ms: float, received_ms: float) -> None:
        return None

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self.t + seconds, next(self._seq), fut))
        await fut

    @property
    def sleeping(self) -> int:
        """Sleepers not yet woken (a test can wait until a task sleeps)."""
        return sum(1 for _, _, fut in self._sleepers if not fut.done())
