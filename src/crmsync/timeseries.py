"""The last minutes of every connection, sampled once a second.

The dashboard draws each connection's sends per second against its limit, its
queue and its errors over time. Each API process samples every connection's
counters (kept in Redis by the workers) once a second into a ring buffer of its
own, so a page opened now still shows the last ten minutes. API processes do not
share their buffers, and a restarted one starts empty.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import structlog

from crmsync import clock, counters
from crmsync.queue import keys
from crmsync.redis_client import RedisClient

log = structlog.get_logger(__name__)

SAMPLE_SECONDS = 1.0
CAPACITY = 600  # samples kept per connection: ten minutes at one a second
CONNECTIONS_MAX_AGE = 10.0  # seconds the list of connections (and limits) is trusted


@dataclass(frozen=True, slots=True)
class Raw:
    """One connection's cumulative counters and queue at one moment."""

    t_ms: int
    requests: int
    records: int  # created + updated + deleted
    rate_limited: int  # the CRM's 429s
    retried: int
    dead: int  # dead-lettered
    queued: int  # ready + leased + delayed + requeue


@dataclass(frozen=True, slots=True)
class Point:
    """One sample as the dashboard draws it: rates per second since the sample before."""

    t: int  # epoch ms
    sent: float  # CRM requests per second
    records: float  # records created, updated or deleted per second
    limit: float | None  # requests per second the tightest rate window allows on average
    queued: int
    rate_limited: float  # 429s per second
    retried: float
    dead: float

    def as_list(self) -> list[Any]:
        return list(asdict(self).values())


FIELDS = tuple(Point.__dataclass_fields__)
RECORDS = (counters.CREATED, counters.ADOPTED, counters.UPDATED, counters.DELETED)


SHORT_WINDOW_MS = 60_000  # windows up to a minute bound the per-second chart


def limit_per_second(rate_limits: Iterable[Mapping[str, Any]]) -> float | None:
    """The rate per second drawn against the sends: the tightest window of up to a
    minute (a daily budget is shown as its share used instead), else the tightest."""
    windows = [(int(w["limit"]), int(w["window_ms"])) for w in rate_limits]
    windows = [w for w in windows if w[1] > 0]
    short = [w for w in windows if w[1] <= SHORT_WINDOW_MS] or windows
    return round(min(n * 1000 / ms for n, ms in short), 3) if short else None


def point(before: Raw, now: Raw, limit: float | None) -> Point | None:
    """The rates between two samples; None when no time passed or a counter went
    back (the connection's counters were reset: the next sample starts afresh)."""
    dt = (now.t_ms - before.t_ms) / 1000
    deltas = [
        now.requests - before.requests,
        now.records - before.records,
        now.rate_limited - before.rate_limited,
        now.retried - before.retried,
        now.dead - before.dead,
    ]
    if dt <= 0 or min(deltas) < 0:
        return None
    sent, records, limited, retried, dead = (round(d / dt, 2) for d in deltas)
    return Point(now.t_ms, sent, records, limit, now.queued, limited, retried, dead)


class Ring:
    """The last ``capacity`` points of one connection, oldest first."""

    def __init__(self, capacity: int = CAPACITY) -> None:
        self.points: deque[Point] = deque(maxlen=capacity)

    def add(self, p: Point) -> None:
        self.points.append(p)

    def since(self, t_ms: int) -> list[Point]:
        """Points taken after ``t_ms`` (a poller passes the last ``t`` it has)."""
        out: list[Point] = []
        for p in reversed(self.points):
            if p.t <= t_ms:
                break
            out.append(p)
        out.reverse()
        return out


class Sampler:
    """Every connection's ring; ``observe`` turns raw samples into points."""

    def __init__(self, capacity: int = CAPACITY) -> None:
        self.capacity = capacity
        self.rings: dict[str, Ring] = {}
        self.last: dict[str, Raw] = {}

    def observe(self, connection_id: str, raw: Raw, limit: float | None) -> Point | None:
        before = self.last.get(connection_id)
        self.last[connection_id] = raw
        p = None if before is None else point(before, raw, limit)
        if p is not None:
            self.rings.setdefault(connection_id, Ring(self.capacity)).add(p)
        return p

    def forget(self, keep: Iterable[str]) -> None:
        """Drop the rings of connections that no longer exist."""
        keep = set(keep)
        for cid in [c for c in self.rings if c not in keep]:
            del self.rings[cid]
        for cid in [c for c in self.last if c not in keep]:
            del self.last[cid]

    def series(self, connection_ids: Iterable[str], since_ms: int = 0) -> dict[str, list[Any]]:
        """Points after ``since_ms`` per connection, each a list in ``FIELDS`` order."""
        return {
            cid: [p.as_list() for p in self.rings[cid].since(since_ms)]
            for cid in connection_ids
            if cid in self.rings
        }

    async def sample(
        self, redis: RedisClient, conns: Sequence[Mapping[str, Any]], t_ms: int | None = None
    ) -> None:
        """One sample of every connection at ``t_ms`` (default now): one pipelined
        Redis round trip for all."""
        if not conns:
            return
        pipe = redis.pipeline(transaction=False)
        for c in conns:
            ck = keys.connection(c["id"])
            pipe.hgetall(ck.stats)
            for k in (ck.ready, ck.leases, ck.delayed, ck.requeue):
                pipe.zcard(k)
        raw = await pipe.execute()
        if t_ms is None:
            t_ms = int(clock.now() * 1000)
        for i, c in enumerate(conns):
            stats_raw, *depths = raw[i * 5 : i * 5 + 5]
            s = counters.ints_of(stats_raw)
            r = Raw(
                t_ms=t_ms,
                requests=s.get(counters.REQUESTS, 0),
                records=sum(s.get(k, 0) for k in RECORDS),
                rate_limited=s.get(counters.RATE_LIMITED, 0),
                retried=s.get(counters.RETRIED, 0),
                dead=s.get(counters.DEAD, 0),
                queued=sum(int(d) for d in depths),
            )
            self.observe(c["id"], r, limit_per_second(c.get("rate_limits") or ()))

    async def run(self, redis: RedisClient, load_connections: Any, stop: asyncio.Event) -> None:
        """Sample once a second until ``stop``; ``load_connections()`` gives the
        connection rows (re-read every ``CONNECTIONS_MAX_AGE`` seconds)."""
        conns: list[Mapping[str, Any]] = []
        loaded_at = float("-inf")
        failing = False
        while not stop.is_set():
            started = clock.monotonic()
            try:
                if started - loaded_at >= CONNECTIONS_MAX_AGE:
                    conns = list(await load_connections())
                    loaded_at = started
                    self.forget(c["id"] for c in conns)
                await self.sample(redis, conns)
                failing = False
            except Exception as exc:  # Redis or PostgreSQL away: the charts show a gap
                if not failing:
                    log.warning("timeseries.sample_failed", error=str(exc))
                failing = True
            wait = max(0.0, SAMPLE_SECONDS - (clock.monotonic() - started))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), wait)
