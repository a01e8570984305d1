"""A claim's rate-limit permits, from admission to the write.

The claim script admits a claim's requests at one Redis time (``admitted_ms``):
one permit per request from every window at once. The CRM counts arrivals, not
admissions, so a permit must stand for the moment its request is written; the
limit margin absorbs small delays (``max_lag_ms``, half of it on a 1-second
window). What this module does when a request goes out later than that:

- readmit: the database read took long; the claim's permits are given back and
  taken again at Redis time now, with room (``QueueStore.readmit``); requests
  left without one are released.
- retake: a request waited at its connection's in-flight gate; the permits of
  all the claim's requests not yet sent are re-taken for now, in one call
  (``QueueStore.retake``), and the next requests use the new stamp.
- take: a request left without a permit (none came back from a retake), or a
  follow-up request of one send (HubSpot's update after a 409, its lookup
  before a delete), takes its own, waiting up to the HTTP timeout; none came:
  ``NoPermit``, the ids are released, which is not an attempt.
- restamp: the request was written late (a busy loop, a descheduled process);
  its permit moves to now, which needs no room (``restamp.lua``). The late
  writes of a loop turn are moved together, one call per admission time.
- refund: permits of requests the claim did not send go back with its
  acknowledgement (``QueueStore.finish(refund=)``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

import structlog

from crmsync.clock import Clock
from crmsync.crm.http import WriteWatch
from crmsync.errors import RateLimited
from crmsync.queue.store import Claim
from crmsync.redis_client import REDIS_ERRORS
from crmsync.worker.ports import Store

log = structlog.get_logger(__name__)

TAKE_POLL_S = 0.02  # how often a request waiting for its own permit asks again


def _no_check(connection_id: str) -> str:
    return ""


class NoPermit(RateLimited):
    """Our own limiter gave no permit in time: the request was not sent (unlike a
    CRM's 429, nothing to wait out or slow down for)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, retry_after=0.0, status=None, code="NO_PERMIT")


@dataclass
class ClaimPermits:
    """Where the permits of a claim's requests not yet sent stand: all in one
    bucket, ``at``, until a request goes out later than the margin absorbs; then
    they are re-taken together, with room."""

    connection_id: str
    at: int
    left: int  # requests not yet sent that hold a permit at ``at``
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class Permits:
    """The permit operations of one worker process."""

    def __init__(
        self,
        store: Store,
        clock: Clock,
        *,
        margin: float,
        http_timeout_seconds: float,
        lineage: Callable[[str], str] | None = None,
    ) -> None:
        self.store = store
        # The lineage marker a connection's Redis state must carry (the healer's):
        # permits taken outside a claim are refused, like a claim, where Redis lost
        # the windows they would come from.
        self.lineage = lineage or _no_check
        self.clock = clock
        self.http_timeout_seconds = http_timeout_seconds
        # Admission-to-send (and to-write) delay above which permits are re-taken
        # before sending (readmit, retake) or moved to the write (restamp): half
        # of what the limit margin absorbs on a 1-second window.
        self.max_lag_ms = max(2.0, margin * 1000 / 2)
        # A claim later than its room opened is stamped when the room opened, at
        # most half the lag budget ago: a late wake-up does not cost its time
        # for good (a pacing cycle would stretch by it), and the database read and
        # the writes keep the other half before they count as late.
        self.backdate_ms = int(self.max_lag_ms / 2)
        # (connection, admitted_ms) -> requests written late, moved once per loop turn
        self._late: dict[tuple[str, int], int] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    async def readmit_if_late(self, claim: Claim, wanted: int) -> Claim:
        """The claim, re-admitted for ``wanted`` requests at Redis time now when
        its database read delayed the sends past the lag the margin absorbs."""
        if wanted and self.clock.now_ms() - claim.admitted_ms > self.max_lag_ms:
            return await self.store.readmit(claim, wanted, self.lineage(claim.connection_id))
        return claim

    async def admission(self, permits: ClaimPermits, held: bool) -> int | None:
        """The admission time of the permit a request goes out on. A request
        ``held`` at the in-flight gate past the lag the margin absorbs re-takes
        the claim's remaining permits for now, with room, one Redis call for all
        of them (a restamp needs no room: only safe for the short delays of a
        write, which ``watch`` moves). A request left without one takes its
        own, waiting up to the HTTP timeout; None if none came."""
        fresh = not held or self.clock.now_ms() - permits.at <= self.max_lag_ms
        if fresh and permits.left > 0 and not permits.lock.locked():
            permits.left -= 1  # the common case: no re-take under way, nothing to wait for
            return permits.at
        async with permits.lock:
            late = self.clock.now_ms() - permits.at > self.max_lag_ms
            if held and late and permits.left > 0:
                granted, at = await self.store.retake(
                    permits.connection_id,
                    permits.at,
                    permits.left,
                    self.lineage(permits.connection_id),
                )
                permits.at, permits.left = at, granted
            if permits.left > 0:
                permits.left -= 1
                return permits.at
        return await self.take_one(permits.connection_id)

    async def try_take(self, connection_id: str) -> int | None:
        """One permit at Redis time now if there is room this moment (no waiting);
        its admission time, or None."""
        granted, at = await self.store.take(connection_id, 1, self.lineage(connection_id))
        return at if granted else None

    async def take_one(self, connection_id: str) -> int | None:
        """One permit at Redis time now, waiting for room up to the HTTP timeout;
        its admission time, or None when none came."""
        deadline = self.clock.monotonic() + self.http_timeout_seconds
        while True:
            granted, at = await self.store.take(connection_id, 1, self.lineage(connection_id))
            if granted:
                return at
            if self.clock.monotonic() > deadline:
                return None
            await self.clock.sleep(TAKE_POLL_S)

    def watch(self, connection_id: str, admitted_ms: int) -> WriteWatch:
        """What the adapter's HTTP calls report for a request admitted at
        ``admitted_ms``: its write (restamped when late) and, before each
        follow-up request of the same send, a permit of its own."""
        return WriteWatch(
            partial(self._written, connection_id, admitted_ms),
            partial(self._extra_permit, connection_id),
        )

    def _written(self, connection_id: str, admitted_ms: int) -> None:
        """The request is being written now. When that is later than its admission
        by more than the lag the margin absorbs, move its permit to now, so the
        limiter counts what the CRM counts."""
        if self.clock.now_ms() - admitted_ms <= self.max_lag_ms:
            return
        # The late writes of one claim come together: one move for all of them.
        if not self._late:
            asyncio.get_running_loop().call_soon(self._move_late)
        key = (connection_id, admitted_ms)
        self._late[key] = self._late.get(key, 0) + 1

    def _move_late(self) -> None:
        late, self._late = self._late, {}
        for (connection_id, admitted_ms), n in late.items():
            task = asyncio.create_task(self._restamp(connection_id, admitted_ms, n))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _restamp(self, connection_id: str, admitted_ms: int, n: int) -> None:
        try:
            await self.store.restamp(connection_id, admitted_ms, n)
        except REDIS_ERRORS as exc:
            # Best effort: the margin still covers most of the delay.
            log.warning("worker.restamp_failed", connection=connection_id, error=str(exc))

    async def _extra_permit(self, connection_id: str) -> None:
        if await self.take_one(connection_id) is None:
            raise NoPermit("no rate-limit permit for a follow-up request")

    async def drain(self, grace_seconds: float) -> None:
        """Let the restamps under way finish (shutdown)."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=grace_seconds)
