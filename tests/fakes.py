"""In-memory twins of what the worker talks to, for unit tests of the real
worker code: the queue store (``crmsync.worker.ports.Store``), the ledger
(``Ledger``), the CRM-wide breaker (``Breaker``), the connections (``Connections``),
the wake-ups (``Wakes``) and a CRM adapter that answers what a test scripts.

They keep the state a test asserts on and follow the contracts in
``crmsync.worker.ports``; they are not models of the Lua scripts or the SQL
(the integration tests run those on real Redis and PostgreSQL). Every call is
appended to one shared ``journal``, so a test can check the order of writes
(ledger before acknowledgement).
"""

from __future__ import annotations

import asyncio
import itertools
import math
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

from redis.exceptions import ConnectionError as RedisConnectionError

from crmsync.breaker import BreakerConfig, BreakerState
from crmsync.clock import FakeClock
from crmsync.connections import Connection
from crmsync.crm.base import CrmAdapter, Op, RecordResult, SendResult
from crmsync.crm.http import WriteWatch
from crmsync.crm.quota import Usage
from crmsync.errors import CrmError
from crmsync.model import Claimed, Contact, DeadLetter, LedgerRow, LedgerWrite
from crmsync.queue.store import Claim
from crmsync.worker.ports import LedgerUnavailable


@dataclass
class Queue:
    """One connection's queue and limiter state in the fake store."""

    ready: list[str] = field(default_factory=list)
    leased: dict[str, str] = field(default_factory=dict)  # contact id -> lease token
    delayed: dict[str, float] = field(default_factory=dict)  # contact id -> seconds
    room: int | None = None  # permits left in the window; None: no limit
    paused: str | None = None
    blocked: list[tuple[float, bool]] = field(default_factory=list)  # (seconds, slow)
    refuse: str | None = None  # a refusal the claim script would answer (e.g. circuit_open)
    probe: bool = False  # claims are the connection breaker's half-open probe
    next_eligible_ms: int | None = None  # what a refused claim names
    counters: Counter[str] = field(default_factory=Counter)
    breaker: list[bool] = field(default_factory=list)  # outcomes reported with hand-backs
    breaker_state: str = "closed"  # what a hand-back with a report answers (a test sets it)
    block_reasons: list[str] = field(default_factory=list)


class FakeStore:
    """``Store`` in memory; its time is the test's ``FakeClock``."""

    def __init__(self, clock: FakeClock, journal: list[str] | None = None) -> None:
        self.clock = clock
        self.journal = journal if journal is not None else []
        self.queues: dict[str, Queue] = {}
        self.fail: set[str] = set()  # operations that raise a Redis error
        self.refunded = 0
        self.readmits: list[tuple[int, int]] = []  # (given back, granted)
        self.retakes: list[tuple[int, int, int]] = []  # (admitted_ms, n, granted)
        self.takes: list[int] = []  # granted
        self.restamps: list[tuple[str, int, int]] = []  # (connection, admitted_ms, n)
        self.renewals = 0
        self._tokens = itertools.count(1)

    def queue(self, connection_id: str) -> Queue:
        return self.queues.setdefault(connection_id, Queue())

    def _call(self, name: str) -> int:
        self.journal.append(f"store.{name}")
        if name in self.fail:
            raise RedisConnectionError(f"fake Redis refused {name}")
        return int(self.clock.now_ms())

    def _grant(self, q: Queue, wanted: int) -> int:
        granted = wanted if q.room is None else min(wanted, q.room)
        if q.room is not None:
            q.room -= granted
        return granted

    async def claim(
        self,
        connection_id: str,
        *,
        max_requests: int,
        batch_size: int,
        lease_ms: int,
        backdate_ms: int = 0,
        lineage: str = "",
    ) -> Claim:
        now = self._call("claim")
        q = self.queue(connection_id)
        token = f"t{next(self._tokens)}"
        refused: str | None = q.refuse
        if refused is None and q.paused:
            refused = "paused"
        elif refused is None and not q.ready:
            refused = "empty"
        permits = 0
        if refused is None:
            needed = math.ceil(len(q.ready) / batch_size)
            permits = self._grant(q, min(max_requests, needed))
            refused = None if permits else "rate_limited"
        ids = q.ready[: permits * batch_size]
        del q.ready[: len(ids)]
        q.leased.update((i, token) for i in ids)
        probe = q.probe and refused is None
        # A refusal, or the probe (whose deadline it names), comes back when the store says.
        nxt = q.next_eligible_ms if refused or probe else (now if q.ready else None)
        return Claim(
            connection_id, token, ids, [0] * len(ids), permits, now, nxt, probe, refused, now
        )

    async def readmit(self, claim: Claim, wanted: int) -> Claim:
        now = self._call("readmit")
        q = self.queue(claim.connection_id)
        if q.room is not None:
            q.room += claim.permits
        granted = self._grant(q, wanted)
        self.readmits.append((claim.permits, granted))
        return replace(claim, permits=granted, admitted_ms=now)

    async def take(self, connection_id: str, wanted: int = 1) -> tuple[int, int]:
        now = self._call("take")
        granted = self._grant(self.queue(connection_id), wanted)
        self.takes.append(granted)
        return granted, now

    async def retake(self, connection_id: str, admitted_ms: int, n: int = 1) -> tuple[int, int]:
        now = self._call("retake")
        q = self.queue(connection_id)
        if q.room is not None:
            q.room += n
        granted = self._grant(q, n)
        self.retakes.append((admitted_ms, n, granted))
        return granted, now

    async def restamp(self, connection_id: str, admitted_ms: int, n: int = 1) -> int:
        now = self._call("restamp")
        self.restamps.append((connection_id, admitted_ms, n))
        return now

    def _mine(self, q: Queue, claim: Claim, ids: Iterable[str]) -> list[str]:
        """The ids still leased to this claim (a lease that expired and was
        claimed again belongs to the new claim)."""
        return [i for i in ids if q.leased.get(i) == claim.token]

    async def finish(
        self,
        claim: Claim,
        *,
        ack: Sequence[str] = (),
        refund: int = 0,
        retry: Mapping[str, float] | None = None,
        release: Sequence[str] = (),
        outcomes: Sequence[bool] = (),
        counters: Mapping[str, int] | None = None,
        block: float = 0.0,
        block_reason: str = "",
        learnt: Usage | None = None,
    ) -> str | None:
        self._call("finish")
        q = self.queue(claim.connection_id)
        if block > 0:
            q.blocked.append((block, False))
            q.block_reasons.append(block_reason)
        for i in self._mine(q, claim, ack):
            del q.leased[i]
        refund = max(0, min(refund, claim.permits))
        self.refunded += refund
        if q.room is not None:
            q.room += refund
        for i, seconds in (retry or {}).items():
            if i in self._mine(q, claim, [i]):
                del q.leased[i]
                q.delayed[i] = seconds
        for i in self._mine(q, claim, release):
            del q.leased[i]
            q.ready.append(i)
        q.breaker.extend(outcomes)
        q.counters.update(counters or {})
        return q.breaker_state if outcomes else None

    async def release(self, claim: Claim, ids: Sequence[str]) -> None:
        await self.finish(claim, release=ids)

    async def renew(self, claim: Claim, ids: Sequence[str], lease_ms: int) -> None:
        self._call("renew")
        self.renewals += 1

    async def learn(self, connection_id: str, usage: Usage, ref: int | None = None) -> bool:
        self._call("learn")
        return False

    async def block(
        self, connection_id: str, seconds: float, *, slow: bool = False, reason: str = ""
    ) -> None:
        self._call("block")
        self.queue(connection_id).blocked.append((seconds, slow))
        self.queue(connection_id).block_reasons.append(reason)

    async def pause(self, connection_id: str, reason: str) -> None:
        self._call("pause")
        self.queue(connection_id).paused = reason

    def expire_leases(self, connection_id: str) -> None:
        """Every lease of the connection runs out: its ids are ready again."""
        q = self.queue(connection_id)
        q.ready.extend(q.leased)
        q.leased.clear()


class FakeLedger:
    """``Ledger`` in memory: contacts by id, ledger rows by (connection, contact)."""

    def __init__(self, journal: list[str] | None = None) -> None:
        self.journal = journal if journal is not None else []
        self.contacts: dict[str, Contact] = {}
        self.committed_ms: dict[str, float] = {}  # when each contact's version was committed
        self.rows: dict[tuple[str, str], LedgerRow] = {}
        self.rules: dict[tuple[str, str], str | None] = {}
        self.errors: dict[tuple[str, str], str | None] = {}
        self.dead: list[tuple[str, DeadLetter]] = []
        self.paused: dict[str, str] = {}
        self.revs: dict[str, str] = {}  # the credentials' rev of each connection, as stored
        self.fail: set[str] = set()  # operations that raise LedgerUnavailable
        self.on_load: Callable[[], None] | None = None  # runs inside load (e.g. a slow read)

    def _call(self, name: str) -> None:
        self.journal.append(f"ledger.{name}")
        if name in self.fail:
            raise LedgerUnavailable(f"fake PostgreSQL refused {name}")

    async def load(self, connection_id: str, tenant: str, ids: Sequence[str]) -> list[Claimed]:
        self._call("load")
        if self.on_load is not None:
            self.on_load()
        out = []
        for i in ids:
            c = self.contacts.get(i)
            out.append(
                Claimed(
                    i,
                    c if c and c.tenant == tenant else None,
                    self.rows.get((connection_id, i)),
                    self.committed_ms.get(i),
                )
            )
        return out

    async def record(
        self, connection_id: str, rows: Sequence[LedgerWrite], dead: Sequence[DeadLetter]
    ) -> None:
        if not rows and not dead:
            return
        self._call("record")
        for w in rows:
            key = (connection_id, w.contact_id)
            old = self.rows.get(key)
            self.rows[key] = LedgerRow(
                w.external_id or (old.external_id if old else None),
                w.synced_version
                if w.synced_version is not None
                else (old.synced_version if old else None),
                w.status,
                w.attempts,
            )
            self.rules[key] = w.rule
            self.errors[key] = w.last_error
        self.dead.extend((connection_id, d) for d in dead)

    async def pause(self, connection_id: str, reason: str, rev: str | None = None) -> bool:
        self._call("pause")
        if connection_id in self.paused or (
            rev is not None and rev != self.revs.get(connection_id)
        ):
            return False
        self.paused[connection_id] = reason
        return True

    def row(self, connection_id: str, contact_id: str) -> LedgerRow | None:
        return self.rows.get((connection_id, contact_id))


@dataclass
class FakeBreaker:
    """``Breaker``: answers ``verdict``; remembers what it was told."""

    verdict: bool | Literal["probe"] = True
    opened_ms: int = 0
    probe_until_ms: int = 0
    cfg: BreakerConfig = field(default_factory=lambda: BreakerConfig(5, 30_000, 12_000))
    asked: int = 0
    recorded: list[tuple[str, list[bool]]] = field(default_factory=list)
    state_after: str = "closed"  # what ``record`` answers

    async def allow(self, crm: str) -> bool | Literal["probe"]:
        self.asked += 1
        return self.verdict

    async def record(self, crm: str, outcomes: Sequence[bool]) -> str | None:
        self.recorded.append((crm, list(outcomes)))
        return self.state_after

    async def state(self, crm: str) -> BreakerState:
        st: Literal["closed", "open"] = "closed" if self.verdict else "open"
        return BreakerState(st, 0, self.opened_ms, self.probe_until_ms)


Answer = Callable[[Sequence[Op]], SendResult]


def ok(ops: Sequence[Op]) -> SendResult:
    """Every record accepted; the CRM's id is ``X-`` and ours (or the one we had)."""
    return SendResult(
        [
            RecordResult(op.contact_id, True, op.external_id or f"X-{op.contact_id}", True)
            for op in ops
        ]
    )


def raising(exc: Exception) -> Answer:
    def answer(ops: Sequence[Op]) -> SendResult:
        raise exc

    return answer


def per_record(errors: Mapping[str, CrmError]) -> Answer:
    """Records named in ``errors`` fail with their error; the rest succeed."""

    def answer(ops: Sequence[Op]) -> SendResult:
        res = ok(ops).results
        return SendResult(
            [
                RecordResult(r.contact_id, False, error=errors[r.contact_id])
                if r.contact_id in errors
                else r
                for r in res
            ]
        )

    return answer


class FakeAdapter:
    """A CRM adapter whose answers a test scripts. Like ``crm.http.call``, it
    reports the first request of a send to the watch when "written", and takes
    a permit for each of ``follow_ups`` further requests."""

    def __init__(
        self, crm: str = "salesforce", answer: Answer = ok, *, max_batch: int = 200
    ) -> None:
        self.crm = crm
        self.max_batch = max_batch
        self.answer = answer
        self.follow_ups = 0
        self.before_write: Callable[[], Awaitable[None] | None] | None = None
        self.sent: list[list[Op]] = []
        self.token_wait = 0.0  # seconds ready() waits, as for a token being refreshed

    async def ready(self) -> bool:
        if self.token_wait:
            await asyncio.sleep(self.token_wait)
        return bool(self.token_wait)

    async def send(self, ops: Sequence[Op], watch: WriteWatch | None = None) -> SendResult:
        if self.before_write is not None:
            pending = self.before_write()
            if pending is not None:
                await pending
        if watch is not None:
            watch.started = True
            watch.calls += 1
            watch.fire()
            for _ in range(self.follow_ups):
                assert watch.extra_permit is not None
                await watch.extra_permit()
                watch.calls += 1
        self.sent.append(list(ops))
        await asyncio.sleep(0)  # the answer comes later than the send
        return self.answer(ops)


class FakeConnections:
    """``Connections``: a fixed set of connections and their adapters."""

    def __init__(self, served: Mapping[str, tuple[Connection, CrmAdapter]]) -> None:
        self.connections = {cid: conn for cid, (conn, _) in served.items()}
        self.adapters = {cid: adapter for cid, (_, adapter) in served.items()}

    async def refresh(self) -> set[str]:
        return set(self.connections)

    async def watch(self, stop: asyncio.Event, on_change: Callable[[set[str]], None]) -> None:
        await stop.wait()


class NoWakes:
    """``Wakes`` for a test that queues everything before the worker starts."""

    async def listen(
        self, stop: asyncio.Event, on_wake: Callable[[Iterable[str] | None], None]
    ) -> None:
        on_wake(None)
        await stop.wait()
