"""A worker process's send slots, and which connection may claim next.

``Scheduler``: the connections this process may claim from, earliest eligible
first. Each process keeps its own view: the claim script in Redis is the
authority (it refuses and says when to come back), so a process never asks
again before the time Redis named, and a connection with nothing to do is only
asked again when the relay publishes a wake-up for it. Ties go round-robin, so
every connection and tenant gets its turn.

``Slots``: the process's ``concurrency`` requests in flight, reserved per
claim. A claim holds its slots until it knows what was queued, so it reserves
what its connection's last claim was granted, twice over (a quiet connection
holds one or two, a backlog reaches a whole claim in a few rounds), then frees
what it was not granted. One connection never holds every slot: a quiet
tenant's change must find room beside a tenant with a huge backlog. Every
freed slot and every connection added or woken sets ``kick``, which wakes the
loop.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections import Counter
from collections.abc import Collection, Iterable

from crmsync.queue.store import Claim
from crmsync.ratelimit import MAX_REQUESTS_PER_CLAIM

IDLE_RECHECK_MS = 5_000  # safety net for a lost wake-up message
CLAIM_CAP = MAX_REQUESTS_PER_CLAIM  # requests per claim: claims stay short, connections interleave
OWN_SHARE_RECHECK_MS = 20  # a connection whose claims hold its share comes back this soon


class Scheduler:
    def __init__(self) -> None:
        self._heap: list[tuple[float, int, str]] = []
        self._entry: dict[str, tuple[int, float]] = {}  # cid -> (seq, at) of its live entry
        self._busy: set[str] = set()
        self._woken_busy: set[str] = set()  # woken while a claim was in flight
        self._known: set[str] = set()
        self._seq = itertools.count()

    def _push(self, cid: str, at_ms: float) -> None:
        seq = next(self._seq)
        self._entry[cid] = (seq, at_ms)
        heapq.heappush(self._heap, (at_ms, seq, cid))

    def add(self, cids: Iterable[str], now_ms: float) -> None:
        for cid in cids:
            self._known.add(cid)
            if cid not in self._busy:
                self._push(cid, now_ms)

    def remove(self, cid: str) -> None:
        self._known.discard(cid)
        self._entry.pop(cid, None)
        self._woken_busy.discard(cid)

    def wake(self, cids: Iterable[str], now_ms: float) -> None:
        """New work arrived: make these connections due now (unless already sooner).
        A connection whose claim is in flight is due again as soon as it is done:
        that claim may have run before the work arrived."""
        for cid in cids:
            if cid not in self._known:
                continue
            if cid in self._busy:
                self._woken_busy.add(cid)
                continue
            live = self._entry.get(cid)
            if live is not None and live[1] <= now_ms:
                continue
            self._push(cid, now_ms)

    def take_due(self, now_ms: float, limit: int) -> list[str]:
        """Pop up to ``limit`` due connections; they are busy until ``done``."""
        out: list[str] = []
        while self._heap and len(out) < limit:
            at, seq, cid = self._heap[0]
            live = self._entry.get(cid)
            if live is None or live[0] != seq:
                heapq.heappop(self._heap)  # stale entry
                continue
            if at > now_ms:
                break
            heapq.heappop(self._heap)
            del self._entry[cid]
            self._busy.add(cid)
            out.append(cid)
        return out

    def done(self, cid: str, next_ms: float | None, now_ms: float) -> None:
        """A claim finished: come back at ``next_ms`` (None: on wake-up only)."""
        self._busy.discard(cid)
        if cid not in self._known:
            return
        if cid in self._woken_busy:
            self._woken_busy.discard(cid)
            next_ms = now_ms
        self._push(cid, next_ms if next_ms is not None else now_ms + IDLE_RECHECK_MS)

    def sooner(self, cid: str, at_ms: float) -> None:
        """Due at ``at_ms`` if it was due later (and no claim of it is in flight)."""
        if cid not in self._known or cid in self._busy:
            return
        live = self._entry.get(cid)
        if live is None or live[1] > at_ms:
            self._push(cid, at_ms)

    def next_due_ms(self) -> float | None:
        while self._heap:
            _, seq, cid = self._heap[0]
            live = self._entry.get(cid)
            if live is not None and live[0] == seq:
                break
            heapq.heappop(self._heap)
        return self._heap[0][0] if self._heap else None

    def __len__(self) -> int:
        return len(self._entry)


def expected_requests(granted: int) -> int:
    """Slots to reserve for a connection's next claim after one that was granted
    ``granted`` requests (not refused for its limits): twice as many, so a
    backlog reaches a full claim in a few rounds and a quiet connection holds
    one or two."""
    return max(1, min(CLAIM_CAP, 2 * granted))


class Slots:
    """Slot reservation per connection, around the process's ``Scheduler``."""

    def __init__(self, concurrency: int, scheduler: Scheduler | None = None) -> None:
        self.concurrency = concurrency
        self.sched = scheduler or Scheduler()
        self.reserved = 0
        self.held: Counter[str] = Counter()  # slots held per connection
        # Requests the next claim of a connection is likely to carry: a quiet
        # connection that reserved a whole claim's worth could leave no slot
        # for the others due with it, and they would wait a loop turn.
        self.expect: dict[str, int] = {}
        self.kick = asyncio.Event()

    def add(self, connection_ids: Iterable[str], now_ms: float) -> None:
        """New, changed or resumed connections: due now."""
        self.sched.add(connection_ids, now_ms)
        self.kick.set()

    def wake(self, connection_ids: Iterable[str], now_ms: float) -> None:
        """The relay published new work for these connections."""
        self.sched.wake(connection_ids, now_ms)
        self.kick.set()

    def take_due(self, now_ms: float, known: Collection[str]) -> list[tuple[str, int]]:
        """The due connections that may claim now, each with the slots reserved
        for its claim. A connection no longer ``known`` is forgotten; one that
        finds no slot stays due (for the next slot freed), one whose own claims
        hold its share comes back in ``OWN_SHARE_RECHECK_MS``."""
        out: list[tuple[str, int]] = []
        free = self.concurrency - self.reserved
        if free <= 0:
            return out
        cap = self.concurrency
        if len(known) > 1:
            cap = max(CLAIM_CAP, self.concurrency * 3 // 4)
        for cid in self.sched.take_due(now_ms, limit=free):
            if cid not in known:
                self.sched.remove(cid)
                continue
            room = cap - self.held[cid]
            want = min(free, self.expect.get(cid, CLAIM_CAP), room)
            if want <= 0:
                self.sched.done(cid, now_ms + OWN_SHARE_RECHECK_MS if room <= 0 else now_ms, now_ms)
                continue
            free -= want
            self.reserved += want
            self.held[cid] += want
            out.append((cid, want))
        return out

    def wait_seconds(self, now_ms: float) -> float:
        """How long the loop may sleep if nothing kicks it: until the next
        connection is due (at most a second; a second when no slot is free)."""
        due = self.sched.next_due_ms()
        if self.reserved >= self.concurrency or due is None:
            return 1.0
        return max(0.0, min(1.0, (due - now_ms) / 1000.0))

    def claimed(self, claim: Claim, held: int, now_ms: float) -> None:
        """The claim script answered: hand the connection back to the scheduler
        at once (other claims on it may proceed while this one sends), due at
        the time Redis named but not before now, so ties go round-robin behind
        the connections already waiting; keep the slots of its permits only."""
        if claim.refused in (None, "empty"):
            # (A claim refused for its limits, a pause or the breaker tells
            # nothing of what is queued.)
            self.expect[claim.connection_id] = expected_requests(claim.permits)
        nxt = claim.next_eligible_ms
        self.sched.done(claim.connection_id, None if nxt is None else max(nxt, now_ms), now_ms)
        self.free(claim.connection_id, held - claim.permits)

    def sooner(self, connection_id: str, at_ms: float) -> None:
        """The connection may claim again at ``at_ms``, sooner than its claim said
        (a failed probe re-opened its breaker: the next probe is one recovery
        time away, not the failed probe's deadline)."""
        self.sched.sooner(connection_id, at_ms)
        self.kick.set()

    def retry_at(self, connection_id: str, at_ms: float, now_ms: float) -> None:
        """No claim was made (the CRM's breaker is open, Redis failed): due at ``at_ms``."""
        self.sched.done(connection_id, at_ms, now_ms)

    def free(self, connection_id: str, n: int) -> None:
        self.reserved -= n
        self.held[connection_id] -= n
        self.kick.set()
