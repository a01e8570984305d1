"""How many requests one worker process keeps in flight to one CRM connection.

The rate limiter decides how many requests a connection may send per window;
this decides how many may be *waiting for an answer* at once. A CRM (or a mock,
or the network) answers requests in the order they queue, so every request in
flight beyond what keeps the CRM busy only waits: it adds its time to every
other request's latency, including the one quiet tenant's change that shares
the CRM host or the worker's event loop. The limit follows the answers' times
the way TCP Vegas (and Netflix's concurrency-limits) do:

- ``no_load`` is the shortest answer time seen lately (the least of this and the
  previous ``period_ms``, so it can rise again when a CRM really becomes slower);
- after about one limit's worth of answers, ``queued = limit * (1 - no_load /
  average)`` estimates how many requests were waiting rather than being served;
- more than ``beta = 6 * log10(limit)`` queued: the limit shrinks by that excess
  (at most a quarter at a time); fewer than ``alpha = 3 * log10(limit)`` while the
  limit was all used: it grows by ``log10(limit)`` plus one. Never below ``floor``
  nor above ``ceiling``.

``Gate`` holds a connection's sends to that limit, first come first served;
``InFlight`` keeps one gate per connection, bounded for its settings and for
whether it has the process to itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections import deque
from dataclasses import dataclass, field

import structlog

from crmsync.connections import Connection
from crmsync.ratelimit import MAX_REQUESTS_PER_CLAIM, PACING_BURST, normalize, with_pacing

log = structlog.get_logger(__name__)

PERIOD_MS = 10_000.0  # how long the no-load time is remembered
MIN_SAMPLES = 8  # answers per adjustment at the least
ALONE = MAX_REQUESTS_PER_CLAIM  # floor of a connection alone in its process: one whole claim
FLOOR = 4  # floor of a connection beside others
ACTIVE_MS = 1000.0  # a connection that sent within this long is active
LOG_EVERY_MS = 30_000.0  # how often a worker logs its active connections' in-flight limits


@dataclass
class AdaptiveLimit:
    floor: int
    ceiling: int
    limit: float
    period_ms: float = PERIOD_MS
    # state
    _min_now: float = math.inf
    _min_before: float = math.inf
    _period_start: float | None = None
    _sum: float = 0.0
    _n: int = 0
    _full: bool = False  # the limit was all used during this round

    def __post_init__(self) -> None:
        self.bound(self.floor, self.ceiling)

    def bound(self, floor: int, ceiling: int) -> None:
        """New bounds; the limit is moved into them."""
        self.floor = max(1, floor)
        self.ceiling = max(self.floor, ceiling)
        self.limit = float(min(self.ceiling, max(self.floor, self.limit)))

    @property
    def allowed(self) -> int:
        return int(self.limit)

    @property
    def no_load_ms(self) -> float:
        return min(self._min_now, self._min_before)

    def saturated(self) -> None:
        """A send found every slot taken (or took the last one)."""
        self._full = True

    def sample(self, rtt_ms: float, now_ms: float) -> None:
        """One answer took ``rtt_ms`` from the send to its last byte."""
        if self._period_start is None:
            self._period_start = now_ms
        elif now_ms - self._period_start >= self.period_ms:
            self._min_before, self._min_now = self._min_now, math.inf
            self._period_start = now_ms
        rtt_ms = max(rtt_ms, 0.01)
        self._min_now = min(self._min_now, rtt_ms)
        self._sum += rtt_ms
        self._n += 1
        if self._n >= max(MIN_SAMPLES, self.allowed):
            self._adjust(self._sum / self._n)
            self._sum, self._n, self._full = 0.0, 0, False

    def _adjust(self, average_ms: float) -> None:
        lim = self.limit
        queued = lim * (1.0 - self.no_load_ms / average_ms)
        log = math.log10(max(lim, 10.0))
        alpha, beta = 3.0 * log, 6.0 * log
        if queued > beta:
            lim -= min(queued - beta, lim / 4.0)
        elif queued < alpha and self._full:
            lim += log + 1.0
        self.limit = min(float(self.ceiling), max(float(self.floor), lim))


@dataclass
class Gate:
    """A connection's sends, at most ``limit.allowed`` at once, in arrival order."""

    limit: AdaptiveLimit
    inflight: int = 0
    _waiters: deque[asyncio.Future[None]] = field(default_factory=deque)

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    async def acquire(self) -> bool:
        """Take a slot, waiting for one if need be; True when it had to wait."""
        if not self._waiters and self.inflight < self.limit.allowed:
            self.inflight += 1
            if self.inflight >= self.limit.allowed:
                self.limit.saturated()
            return False
        self.limit.saturated()
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.release()  # granted, then cancelled: hand the slot on
            else:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(fut)
            raise
        return True

    def release(self) -> None:
        self.inflight -= 1
        self._wake()

    def sample(self, rtt_ms: float, now_ms: float) -> None:
        """An answer's time; a grown limit lets waiting sends go at once."""
        self.limit.sample(rtt_ms, now_ms)
        self._wake()

    def _wake(self) -> None:
        while self._waiters and self.inflight < self.limit.allowed:
            fut = self._waiters.popleft()
            if not fut.done():
                self.inflight += 1
                fut.set_result(None)


class InFlight:
    """The in-flight gates of one worker process, one per connection.

    A connection alone in the process (the only one that sent within
    ``ACTIVE_MS``) may fill it: its floor is a whole claim. Beside other active
    connections it keeps only what keeps its CRM's queue short, down to
    ``FLOOR``, or to its pacing burst when that is small (what one claim carries
    and sends at once). Never above the connection's ``max_in_flight`` nor the
    process's concurrency.
    """

    def __init__(self, concurrency: int) -> None:
        self.concurrency = concurrency
        # connection -> (the Connection and alone-ness it was bounded for, its gate)
        self.gates: dict[str, tuple[Connection, bool, Gate]] = {}
        self.active: dict[str, float] = {}  # connection -> when it last sent
        self._alone: str | None = None  # the only active connection, if just one
        self._active_at = 0.0
        self._logged_at = 0.0

    def sending(self, connection_id: str, now_ms: float) -> None:
        """Note a sending connection; once a second, forget the quiet ones and
        see whether a single connection has the process to itself."""
        self.active[connection_id] = now_ms
        if now_ms - self._active_at >= ACTIVE_MS:
            self._active_at = now_ms
            self.active = {c: t for c, t in self.active.items() if now_ms - t < ACTIVE_MS}
            if now_ms - self._logged_at >= LOG_EVERY_MS:
                self._logged_at = now_ms
                self._log()
        self._alone = next(iter(self.active)) if len(self.active) == 1 else None

    def gate(self, conn: Connection) -> Gate:
        """The connection's gate, bounded for its settings and for whether it is
        alone (history kept when either changes)."""
        alone = self._alone == conn.id
        known = self.gates.get(conn.id)
        if known is not None and known[1] == alone and (known[0] is conn or known[0] == conn):
            if known[0] is not conn:
                self.gates[conn.id] = (conn, alone, known[2])
            return known[2]
        floor, ceiling = bounds(conn, self.concurrency, alone=alone)
        if known is None:
            gate = Gate(AdaptiveLimit(floor, ceiling, ALONE))
        else:
            gate = known[2]
            gate.limit.bound(floor, ceiling)
        self.gates[conn.id] = (conn, alone, gate)
        return gate

    def _log(self) -> None:
        """What the in-flight limits settled on, for the active connections."""
        for cid in sorted(self.active):
            known = self.gates.get(cid)
            if known is None:
                continue
            gate = known[2]
            lim = gate.limit
            log.info(
                "worker.in_flight",
                connection=cid,
                limit=lim.allowed,
                floor=lim.floor,
                ceiling=lim.ceiling,
                no_load_ms=None if math.isinf(lim.no_load_ms) else round(lim.no_load_ms, 1),
                in_flight=gate.inflight,
                waiting=gate.waiting,
            )


def bounds(conn: Connection, concurrency: int, *, alone: bool) -> tuple[int, int]:
    """(floor, ceiling) of a connection's adaptive in-flight limit in one process."""
    ceiling = conn.max_in_flight(concurrency)
    if alone:
        floor = ALONE
    else:
        floor = FLOOR
        if conn.windows:
            # Paced in small bursts (limits up to about 500/s): keep one whole.
            burst = min(w.limit for w in with_pacing(normalize(conn.windows)))
            if burst <= PACING_BURST:
                floor = max(floor, burst)
    return min(floor, ceiling), ceiling
