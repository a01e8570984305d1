"""Which connections this worker process may claim from, earliest eligible first.

Each process keeps its own view: the claim script in Redis is the authority
(it refuses and says when to come back), so a process never asks again before
the time Redis named, and a connection with nothing to do is only asked again
when the relay publishes a wake-up for it. Ties go round-robin, so every
connection and tenant gets its turn.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Iterable

IDLE_RECHECK_MS = 5_000  # safety net for a lost wake-up message


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
