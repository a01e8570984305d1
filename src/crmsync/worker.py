"""The sync worker: claim, read, decide, send, record, acknowledge.

One process runs one event loop with up to ``concurrency`` CRM requests in
flight. Per claim it does one Redis call (claim), one SELECT (current rows and
ledger rows of every claimed id), the CRM requests, one INSERT into the ledger
(and one into dead letters when needed), then acknowledges in Redis. The
ledger is written before the acknowledgement: a crash in between only means
the lease expires and the same idempotent upsert is sent again.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import asyncpg
import structlog
from asyncpg.pool import PoolConnectionProxy
from redis.asyncio import Redis
from redis.exceptions import RedisError

from crmsync import counters, db
from crmsync.breaker import CrmBreaker
from crmsync.clock import RedisClock
from crmsync.concurrency import AdaptiveLimit, Gate
from crmsync.connections import Connection
from crmsync.crm.base import CrmAdapter, Op, SendResult
from crmsync.crm.http import WriteWatch
from crmsync.errors import AuthFailed, CrmError, Permanent, RateLimited, Retryable
from crmsync.model import Contact, LedgerRow
from crmsync.queue import keys
from crmsync.queue.store import Claim, QueueStore
from crmsync.ratelimit import MAX_REQUESTS_PER_CLAIM, PACING_BURST, normalize, with_pacing
from crmsync.registry import Registry
from crmsync.retry import RetryPolicy
from crmsync.rules import Decision, decide
from crmsync.scheduler import Scheduler
from crmsync.settings import Settings

log = structlog.get_logger(__name__)

# Requests per claim: keeps claims short and connections interleaved.
CLAIM_CAP = MAX_REQUESTS_PER_CLAIM
# Requests in flight per connection and process (concurrency.py). A connection
# alone in a process may fill it (at least IN_FLIGHT_ALONE: one whole claim);
# beside other active connections it keeps only what keeps its CRM's queue short,
# down to IN_FLIGHT_FLOOR, or to its pacing burst when that is small (what one
# claim carries and sends at once).
IN_FLIGHT_ALONE = CLAIM_CAP
IN_FLIGHT_FLOOR = 4
ACTIVE_MS = 1000.0  # a connection that sent within this long is active
GATE_LOG_MS = 30_000.0  # how often a worker logs its active connections' in-flight limits
DB_ERRORS = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError)


class NoPermit(RateLimited):
    """Our own limiter gave no permit in time: the request was not sent (unlike a
    CRM's 429, nothing to wait out or slow down for)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, retry_after=0.0, status=None, code="NO_PERMIT")


@dataclass
class _Item:
    """One claimed contact on its way through a claim."""

    contact_id: str
    contact: Contact | None
    ledger: LedgerRow | None
    attempts: int
    decision: Decision | None = None


@dataclass
class _Record:
    """Everything one claim writes back, gathered so it is written set-based."""

    ledger: list[tuple[str, str | None, int | None, str, str | None, int, str | None]] = field(
        default_factory=list
    )
    dead: list[tuple[str, int | None, str, str | None, str, int | None, Any, int]] = field(
        default_factory=list
    )
    ack: list[str] = field(default_factory=list)
    retry: dict[str, float] = field(default_factory=dict)
    release: list[str] = field(default_factory=list)
    outcomes: list[bool] = field(default_factory=list)
    counts: Counter[str] = field(default_factory=Counter)
    paused: bool = False  # a 401 of this claim paused the connection already
    limited_for: float = 0.0  # longest wait a CRM's 429 of this claim asked for
    block_for: float = 0.0  # longest pause the CRM's quota headers asked for


@dataclass
class _Permits:
    """Where the permits of a claim's requests not yet sent stand: all in one
    bucket, ``at``, until a request goes out later than the margin absorbs; then
    they are re-taken together, with room (``QueueStore.retake``)."""

    at: int
    left: int  # requests not yet sent that hold a permit at ``at``
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


async def _write_rows(
    pg: asyncpg.Pool[Any] | PoolConnectionProxy[Any], connection_id: str, rec: _Record
) -> None:
    """The claim's ledger rows and dead letters, one set-based statement each."""
    if rec.ledger:
        await pg.execute(db.q("worker_record"), connection_id, *zip(*rec.ledger, strict=True))
    if rec.dead:
        await pg.execute(db.q("worker_dead_letters"), connection_id, *zip(*rec.dead, strict=True))


def expected_requests(granted: int) -> int:
    """Slots to reserve for a connection's next claim after one that was granted
    ``granted`` requests (not refused for its limits): twice as many, so a
    backlog reaches a full claim in a few rounds and a quiet connection holds
    one or two."""
    return max(1, min(CLAIM_CAP, 2 * granted))


def in_flight_bounds(conn: Connection, concurrency: int, *, alone: bool) -> tuple[int, int]:
    """(floor, ceiling) of a connection's adaptive in-flight limit in one process."""
    ceiling = conn.max_in_flight(concurrency)
    if alone:
        floor = IN_FLIGHT_ALONE
    else:
        floor = IN_FLIGHT_FLOOR
        if conn.windows:
            # Paced in small bursts (limits up to about 500/s): keep one whole.
            burst = min(w.limit for w in with_pacing(normalize(conn.windows)))
            if burst <= PACING_BURST:
                floor = max(floor, burst)
    return min(floor, ceiling), ceiling


def _payload(op: Op) -> dict[str, Any]:
    if op.contact is None:
        return {"external_id": op.external_id}
    return op.contact.fields()


def _row_to_item(row: asyncpg.Record, tenant: str) -> _Item:
    contact: Contact | None = None
    if row["version"] is not None and row["tenant"] == tenant:
        contact = Contact(
            id=row["id"],
            tenant=row["tenant"],
            email=row["email"],
            first_name=row["first_name"],
            last_name=row["last_name"],
            company=row["company"],
            status=row["status"],
            version=row["version"],
            deleted=row["deleted"],
        )
    ledger: LedgerRow | None = None
    if row["sync_status"] is not None:
        ledger = LedgerRow(
            external_id=row["external_id"],
            synced_version=row["synced_version"],
            status=row["sync_status"],
        )
    return _Item(row["id"], contact, ledger, row["attempts"] or 0)


class Worker:
    """One process's sync loop."""

    def __init__(
        self,
        settings: Settings,
        pool: asyncpg.Pool[Any],
        redis: Redis,
        store: QueueStore,
        registry: Registry,
        *,
        concurrency: int,
    ) -> None:
        self.settings = settings
        self.pool = pool
        self.redis = redis
        self.store = store
        self.registry = registry
        self.concurrency = concurrency
        self.policy = RetryPolicy(
            attempts=settings.retry_attempts,
            base=settings.retry_base_seconds,
            cap=settings.retry_cap_seconds,
        )
        self.lease_ms = int(settings.lease_seconds * 1000)
        # Admission-to-send (and to-write) delay above which permits are re-taken
        # before sending (readmit) or moved to the write (restamp): half of what
        # the limit margin absorbs on a 1-second window.
        self.max_lag_ms = max(2.0, settings.limit_margin * 1000 / 2)
        # A claim later than its room opened is stamped when the room opened, at
        # most half the lag budget ago: a late wake-up no longer costs its time
        # for good (a pacing cycle would stretch by it), and the database read and
        # the writes keep the other half before they count as late.
        self.backdate_ms = int(self.max_lag_ms / 2)
        self.sched = Scheduler()
        self.clock = RedisClock()  # every time below is on Redis's clock
        self.now_ms = self.clock.now_ms
        self.reserved = 0
        self.inflight: Counter[str] = Counter()  # slots held per connection
        # Requests the next claim of a connection is likely to carry: a claim
        # holds its slots until it knows what was queued, so a quiet connection
        # that reserved a whole claim's worth could leave none for the others
        # due with it (they waited a turn: 20-40 ms at p90-p99 in `fair`).
        self.expect: dict[str, int] = {}
        # connection -> (the Connection and alone-ness it was bounded for, its gate)
        self.gates: dict[str, tuple[Connection, bool, Gate]] = {}
        self.active: dict[str, float] = {}  # connection -> when it last sent
        self._alone: str | None = None  # the only active connection, if just one
        self._active_at = 0.0
        self._gates_logged_at = 0.0
        self.kick = asyncio.Event()
        # (connection, admitted_ms) -> requests written late, moved once per loop turn
        self._late: dict[tuple[str, int], int] = {}
        self.tasks: set[asyncio.Task[None]] = set()
        self.crm_breaker = CrmBreaker(
            redis,
            threshold=settings.breaker_threshold,
            recovery_ms=int(settings.breaker_recovery_seconds * 1000),
            probe_ms=int(settings.http_timeout_seconds * 1000) + 2000,
        )
        # crm -> (valid until ms, verdict): a closed CRM breaker is re-read every
        # 50 ms; an open one is not asked again before its recovery time.
        self._crm_gate: dict[str, tuple[float, bool]] = {}
        self._crm_failed_at: dict[str, float] = {}

    # -- the loop ---------------------------------------------------------------

    def on_connections_changed(self, cids: set[str]) -> None:
        now = self.now_ms()
        known = set(self.registry.connections)
        for cid in cids:
            if cid in known:
                self.sched.add([cid], now)
        self.kick.set()

    async def run(self, stop: asyncio.Event) -> None:
        touched = await self.registry.refresh()
        self.sched.add(touched, self.now_ms())
        helpers = [
            asyncio.create_task(self.registry.watch(stop, self.on_connections_changed)),
            asyncio.create_task(self._listen_wakeups(stop)),
        ]
        try:
            await self._loop(stop)
        finally:
            await self._drain()
            for h in helpers:
                h.cancel()
            for h in helpers:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await h

    async def _loop(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            now = self.now_ms()
            free = self.concurrency - self.reserved
            if free > 0:
                for cid in self.sched.take_due(now, limit=free):
                    conn = self.registry.connections.get(cid)
                    adapter = self.registry.adapters.get(cid)
                    if conn is None or adapter is None:
                        self.sched.remove(cid)
                        continue
                    # One connection may not hold every slot: a quiet tenant's
                    # change must find room beside a tenant with a huge backlog.
                    cap = self.concurrency
                    if len(self.registry.connections) > 1:
                        cap = max(CLAIM_CAP, self.concurrency * 3 // 4)
                    room = cap - self.inflight[cid]
                    want = min(free, self.expect.get(cid, CLAIM_CAP), room)
                    if want <= 0:
                        # Its own claims hold its share: they free slots soon. With
                        # no slot free it stays due, for the next slot freed.
                        self.sched.done(cid, now + 20 if room <= 0 else now, now)
                        continue
                    free -= want
                    self.reserved += want
                    self.inflight[cid] += want
                    task = asyncio.create_task(self._claim_and_process(conn, adapter, want))
                    self.tasks.add(task)
                    task.add_done_callback(self.tasks.discard)
            due = self.sched.next_due_ms()
            if free <= 0 or due is None:
                timeout = 1.0
            else:
                timeout = max(0.0, min(1.0, (due - self.now_ms()) / 1000.0))
            self.kick.clear()
            stop_wait = asyncio.ensure_future(stop.wait())
            kick_wait = asyncio.ensure_future(self.kick.wait())
            await asyncio.wait(
                {stop_wait, kick_wait}, timeout=timeout, return_when="FIRST_COMPLETED"
            )
            stop_wait.cancel()
            kick_wait.cancel()

    async def _drain(self) -> None:
        """Stop claiming; give in-flight claims the grace period, then release the rest."""
        if not self.tasks:
            return
        _, pending = await asyncio.wait(self.tasks, timeout=self.settings.shutdown_grace_seconds)
        for t in pending:
            t.cancel()
        if pending:
            await asyncio.wait(pending, timeout=5.0)

    async def _listen_wakeups(self, stop: asyncio.Event) -> None:
        """The relay publishes the connections that got new work."""
        while not stop.is_set():
            pubsub = self.redis.pubsub()
            try:
                await pubsub.subscribe(keys.WAKE_CHANNEL)
                # A message may have been missed while (re)subscribing.
                self.sched.wake(list(self.registry.connections), self.now_ms())
                self.kick.set()
                while not stop.is_set():
                    msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                    if msg is None or msg.get("type") != "message":
                        continue
                    data = msg["data"]
                    text = data.decode() if isinstance(data, bytes) else str(data)
                    self.sched.wake([c for c in text.split(",") if c], self.now_ms())
                    self.kick.set()
            except (RedisError, OSError) as exc:
                log.warning("worker.wake_listener_error", error=str(exc))
                await asyncio.sleep(1.0)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()

    def _free(self, cid: str, n: int) -> None:
        self.reserved -= n
        self.inflight[cid] -= n
        self.kick.set()

    # -- one claim --------------------------------------------------------------

    def _crm_suspect(self, crm: str) -> bool:
        """This process saw a failure of the CRM lately (or the gate is not open)."""
        gate = self._crm_gate.get(crm)
        if gate is not None and not gate[1]:
            return True
        failed = self._crm_failed_at.get(crm)
        return failed is not None and self.now_ms() - failed < 60_000

    async def _crm_allows(self, crm: str) -> tuple[bool, bool, float]:
        """(may send, is the CRM-wide probe, when to ask again if not)."""
        now = self.now_ms()
        cached = self._crm_gate.get(crm)
        if cached is not None and cached[0] > now:
            return cached[1], False, cached[0]
        verdict = await self.crm_breaker.allow(crm)
        if verdict == "probe":
            return True, True, now
        if verdict:
            self._crm_gate[crm] = (now + 50, True)
            return True, False, now
        st = await self.crm_breaker.state(crm)
        until = max(st.opened_ms + self.crm_breaker.cfg.recovery_ms, st.probe_until_ms, now + 50)
        self._crm_gate[crm] = (until, False)
        return False, False, until

    async def _claim_and_process(self, conn: Connection, adapter: CrmAdapter, want: int) -> None:
        held = want
        batch = conn.batch_size(self.settings.batch_size, adapter.max_batch)
        try:
            try:
                allowed, crm_probe, retry_at = await self._crm_allows(conn.crm)
                if not allowed:
                    self.sched.done(conn.id, retry_at, self.now_ms())
                    return
                if crm_probe:
                    want = 1
                sent_ms = self.clock.local_ms()
                claim = await self.store.claim(
                    conn.id,
                    max_requests=want,
                    batch_size=batch,
                    lease_ms=self.lease_ms,
                    backdate_ms=self.backdate_ms,
                )
                self.clock.observe(claim.redis_ms, sent_ms, self.clock.local_ms())
            except Exception as exc:  # Redis down or flushed mid-call: try again soon
                log.warning("worker.claim_failed", connection=conn.id, error=str(exc))
                self.sched.done(conn.id, self.now_ms() + 1000, self.now_ms())
                return
            # (A claim refused for its limits, a pause or the breaker tells nothing
            # of what is queued.)
            if claim.refused in (None, "empty"):
                self.expect[conn.id] = expected_requests(claim.permits)
            # Hand the connection back to the scheduler at once: other claims on
            # it may proceed while this one is sending.
            # Due again "now" at the earliest, so ties go round-robin behind the
            # connections already waiting rather than ahead of them.
            nxt = claim.next_eligible_ms
            now = self.now_ms()
            self.sched.done(conn.id, None if nxt is None else max(nxt, now), now)
            self.kick.set()
            self._free(conn.id, held - claim.permits)
            held = claim.permits
            if not claim.ids:
                return
            try:
                outcomes = await self._process(conn, adapter, claim, batch)
            except (RedisError, OSError, *DB_ERRORS) as exc:
                # The work was released (or its lease will expire): nothing lost.
                log.warning("worker.claim_aborted", connection=conn.id, error=str(exc))
                return
            if outcomes and (crm_probe or False in outcomes or self._crm_suspect(conn.crm)):
                # Successes only matter to the CRM breaker while failures may be
                # counting (a success resets them): skip the round trip otherwise.
                # A probe that sent nothing proves nothing: its slot expires.
                await self.crm_breaker.record(conn.crm, outcomes)
                if False in outcomes:
                    self._crm_failed_at[conn.crm] = self.now_ms()
                    self._crm_gate.pop(conn.crm, None)
        finally:
            self._free(conn.id, held)

    async def _process(
        self, conn: Connection, adapter: CrmAdapter, claim: Claim, batch: int
    ) -> list[bool]:
        renew = asyncio.create_task(self._renew(claim))
        rec = _Record()
        done = False
        try:
            try:
                rows = await self.pool.fetch(db.q("worker_load"), conn.id, claim.ids)
            except DB_ERRORS as exc:
                log.warning("worker.load_failed", connection=conn.id, error=str(exc))
                await self.store.release(claim, claim.ids)
                done = True
                return []
            items = [_row_to_item(r, conn.tenant) for r in rows]
            requests = self._plan(conn, items, batch, rec)
            sent = requests[: claim.permits]
            for ops, _ in requests[claim.permits :]:
                rec.release.extend(op.contact_id for op in ops)
            if sent and self.now_ms() - claim.admitted_ms > self.max_lag_ms:
                # The read took long: re-admit at the time of sending.
                claim = await self.store.readmit(claim, len(sent))
                for ops, _ in sent[claim.permits :]:
                    rec.release.extend(op.contact_id for op in ops)
                sent = sent[: claim.permits]
            if sent:
                now = self.now_ms()
                rec.counts[counters.latency_field(now - claim.admitted_ms, "lag")] += len(sent)
                self._mark_active(conn.id, now)
            limited = bool(conn.windows)  # no windows: no permits to move or take
            gate = self._gate(conn)
            permits = _Permits(claim.admitted_ms, len(sent))
            results = await asyncio.gather(
                *(
                    self._send(adapter, ops, claim, permits if limited else None, gate)
                    for ops, _ in sent
                )
            )
            for (ops, by_id), (res, ms, held) in zip(sent, results, strict=True):
                rec.counts[counters.latency_field(ms)] += 1
                rec.counts[counters.HELD] += held
                await self._outcome(conn, ops, by_id, res, rec)
            if rec.limited_for:
                # The CRM's view of the limit differs from ours: everyone waits
                # (and runs slower for a while), at once, one call for the claim.
                await self.store.block(conn.id, rec.limited_for, slow=True)
            await self._write(conn, claim, rec, refund=claim.permits - len(sent))
            done = True
            return rec.outcomes
        finally:
            renew.cancel()
            if not done:
                # Cancelled (shutdown) or failed: give the work back, no attempt burned.
                with contextlib.suppress(Exception):
                    await asyncio.shield(self.store.release(claim, claim.ids))

    def _plan(
        self, conn: Connection, items: list[_Item], batch: int, rec: _Record
    ) -> list[tuple[list[Op], dict[str, _Item]]]:
        """Decide per contact; group sends into requests of ``batch`` records."""
        upserts: list[Op] = []
        deletes: list[Op] = []
        by_id: dict[str, _Item] = {}
        for it in items:
            d = decide(conn.crm, it.contact, it.ledger)
            it.decision = d
            by_id[it.contact_id] = it
            if d.action == "noop":
                rec.ack.append(it.contact_id)
            elif d.action == "skip":
                assert it.contact is not None
                rec.ledger.append(
                    (it.contact_id, None, it.contact.version, "skipped", d.rule, 0, None)
                )
                rec.ack.append(it.contact_id)
                rec.counts[counters.SKIPPED] += 1
            elif d.action == "delete":
                ext = it.ledger.external_id if it.ledger else None
                deletes.append(Op("delete", it.contact_id, None, ext))
            else:
                assert it.contact is not None
                ext = it.ledger.external_id if it.ledger else None
                upserts.append(Op(d.action, it.contact_id, it.contact, ext))
        requests: list[tuple[list[Op], dict[str, _Item]]] = []
        for ops in (upserts, deletes):
            for i in range(0, len(ops), batch):
                chunk = ops[i : i + batch]
                requests.append((chunk, {op.contact_id: by_id[op.contact_id] for op in chunk}))
        return requests

    def _mark_active(self, cid: str, now: float) -> None:
        """Note a sending connection; once a second, forget the quiet ones and
        see whether a single connection has the process to itself."""
        self.active[cid] = now
        if now - self._active_at >= ACTIVE_MS:
            self._active_at = now
            self.active = {c: t for c, t in self.active.items() if now - t < ACTIVE_MS}
            if now - self._gates_logged_at >= GATE_LOG_MS:
                self._gates_logged_at = now
                self._log_gates()
        self._alone = next(iter(self.active)) if len(self.active) == 1 else None

    def _log_gates(self) -> None:
        """What the in-flight limits settled on, for the active connections."""
        for cid in sorted(self.active):
            known = self.gates.get(cid)
            if known is None:
                continue
            lim = known[2].limit
            log.info(
                "worker.in_flight",
                connection=cid,
                limit=lim.allowed,
                floor=lim.floor,
                ceiling=lim.ceiling,
                no_load_ms=None if math.isinf(lim.no_load_ms) else round(lim.no_load_ms, 1),
                in_flight=known[2].inflight,
                waiting=known[2].waiting,
            )

    def _gate(self, conn: Connection) -> Gate:
        """The connection's gate, bounded for its settings and for whether it is
        alone (history kept when either changes)."""
        alone = self._alone == conn.id
        known = self.gates.get(conn.id)
        if known is not None and known[1] == alone and (known[0] is conn or known[0] == conn):
            if known[0] is not conn:
                self.gates[conn.id] = (conn, alone, known[2])
            return known[2]
        floor, ceiling = in_flight_bounds(conn, self.concurrency, alone=alone)
        if known is None:
            gate = Gate(AdaptiveLimit(floor, ceiling, IN_FLIGHT_ALONE))
        else:
            gate = known[2]
            gate.limit.bound(floor, ceiling)
        self.gates[conn.id] = (conn, alone, gate)
        return gate

    async def _send(
        self,
        adapter: CrmAdapter,
        ops: Sequence[Op],
        claim: Claim,
        permits: _Permits | None,
        gate: Gate,
    ) -> tuple[SendResult | CrmError, float, bool]:
        """(outcome, answer time ms, whether it waited at the in-flight limit).
        ``permits``: the claim's, for a connection with rate limits."""
        waited = await gate.acquire()
        t0 = time.perf_counter()
        try:
            watch = None
            if permits is not None:
                admitted = await self._admission(claim, permits, waited)
                if admitted is None:
                    raise NoPermit("no rate-limit permit for a request held back")
                watch = WriteWatch(
                    partial(self._written, claim.connection_id, admitted),
                    partial(self._extra_permit, claim),
                )
                t0 = time.perf_counter()
            res: SendResult | CrmError = await adapter.send(ops, watch)
        except CrmError as exc:
            res = exc
        finally:
            gate.release()
        ms = (time.perf_counter() - t0) * 1000.0
        if not isinstance(res, NoPermit) and not (
            isinstance(res, Retryable) and res.code == "CONNECTION"
        ):
            # A refused connection answers at once: no measure of the CRM's time.
            gate.sample(ms, self.now_ms())
        return res, ms, waited

    async def _admission(self, claim: Claim, permits: _Permits, held: bool) -> int | None:
        """The admission time of the permit this request goes out on. A request
        ``held`` at the in-flight gate past the lag the margin absorbs re-takes
        the claim's remaining permits for now, with room, one Redis call for all
        of them (a restamp needs no room: only safe for the short delays of a
        write, which ``_written`` moves). A request left without one takes its
        own, waiting up to the HTTP timeout; None if none came."""
        fresh = not held or self.now_ms() - permits.at <= self.max_lag_ms
        if fresh and permits.left > 0 and not permits.lock.locked():
            permits.left -= 1  # the common case: no re-take under way, nothing to wait for
            return permits.at
        async with permits.lock:
            late = self.now_ms() - permits.at > self.max_lag_ms
            if held and late and permits.left > 0:
                cid = claim.connection_id
                granted, at = await self.store.retake(cid, permits.at, permits.left)
                permits.at, permits.left = at, granted
            if permits.left > 0:
                permits.left -= 1
                return permits.at
        return await self._take_one(claim.connection_id)

    async def _take_one(self, cid: str) -> int | None:
        """One permit at Redis time now, waiting for room up to the HTTP timeout;
        its admission time, or None when none came."""
        deadline = time.monotonic() + self.settings.http_timeout_seconds
        while True:
            granted, at = await self.store.take(cid, 1)
            if granted:
                return at
            if time.monotonic() > deadline:
                return None
            await asyncio.sleep(0.02)

    def _written(self, cid: str, admitted_ms: int) -> None:
        """The request is being written now. When that is later than its admission
        by more than the lag the margin absorbs (a busy loop, a descheduled
        process), move its permit to now, so the limiter counts what the CRM
        counts. The move is atomic and needs no room (``restamp.lua``)."""
        if self.now_ms() - admitted_ms <= self.max_lag_ms:
            return
        # The late writes of one claim come together: one move for all of them.
        if not self._late:
            asyncio.get_running_loop().call_soon(self._move_late)
        key = (cid, admitted_ms)
        self._late[key] = self._late.get(key, 0) + 1

    def _move_late(self) -> None:
        late, self._late = self._late, {}
        for (cid, admitted_ms), n in late.items():
            task = asyncio.create_task(self._restamp(cid, admitted_ms, n))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def _extra_permit(self, claim: Claim) -> None:
        """Wait for one more permit for a follow-up request of a send (HubSpot's
        update after a 409, its lookup before a delete). Not granted within the
        HTTP timeout: the ids go back, which is not an attempt."""
        if await self._take_one(claim.connection_id) is None:
            raise NoPermit("no rate-limit permit for a follow-up request")

    async def _restamp(self, cid: str, admitted_ms: int, n: int) -> None:
        try:
            await self.store.restamp(cid, admitted_ms, n)
        except RedisError as exc:
            # Best effort: the margin still covers most of the delay.
            log.warning("worker.restamp_failed", connection=cid, error=str(exc))

    async def _outcome(
        self,
        conn: Connection,
        ops: list[Op],
        by_id: dict[str, _Item],
        res: SendResult | CrmError,
        rec: _Record,
    ) -> None:
        if isinstance(res, NoPermit):
            # Our own limiter had no room in time: nothing was sent, no attempt.
            rec.release.extend(op.contact_id for op in ops)
            rec.outcomes.append(True)
            return
        rec.counts[counters.REQUESTS] += 1
        if isinstance(res, RateLimited):
            # Everyone waits (after the claim's outcomes); no attempt.
            rec.limited_for = max(rec.limited_for, res.retry_after)
            rec.counts[counters.RATE_LIMITED] += 1
            rec.release.extend(op.contact_id for op in ops)
            rec.outcomes.append(True)
            return
        if isinstance(res, AuthFailed):
            if not rec.paused:  # once per claim, not once per request of it
                rec.paused = True
                await self.registry.pause(conn.id, f"CRM rejected the token (401): {res.message}")
            rec.release.extend(op.contact_id for op in ops)
            rec.outcomes.append(True)
            return
        if isinstance(res, CrmError):
            rec.outcomes.append(not isinstance(res, Retryable))
            for op in ops:
                self._fail(op, by_id[op.contact_id], res, rec)
            return
        rec.outcomes.append(True)
        if res.block_for:  # held back with the claim's hand-back (finish)
            rec.block_for = max(rec.block_for, res.block_for)
        for op, r in zip(ops, res.results, strict=True):
            it = by_id[op.contact_id]
            if r.ok:
                version = it.contact.version if it.contact else None
                status = "deleted" if op.kind == "delete" else "synced"
                rec.ledger.append((op.contact_id, r.external_id, version, status, None, 0, None))
                rec.ack.append(op.contact_id)
                rec.counts[
                    {"create": counters.CREATED, "update": counters.UPDATED}.get(
                        op.kind, counters.DELETED
                    )
                ] += 1
            else:
                err = r.error or Permanent("CRM reported failure without an error", status=None)
                self._fail(op, it, err, rec)

    def _fail(self, op: Op, it: _Item, err: CrmError, rec: _Record) -> None:
        attempts = it.attempts + 1
        message = f"{err.code}: {err.message}" if err.code else err.message
        version = it.contact.version if it.contact else None
        if isinstance(err, Retryable) and not self.policy.exhausted(attempts):
            rec.ledger.append((op.contact_id, None, None, "retrying", None, attempts, message))
            rec.retry[op.contact_id] = self.policy.delay(attempts)
            rec.counts[counters.RETRIED] += 1
            return
        rec.ledger.append((op.contact_id, None, None, "dead", None, attempts, message))
        rec.dead.append(
            (
                op.contact_id,
                version,
                op.kind,
                err.code,
                err.message,
                err.status,
                _payload(op),
                attempts,
            )
        )
        rec.ack.append(op.contact_id)
        rec.counts[counters.DEAD] += 1

    async def _write(self, conn: Connection, claim: Claim, rec: _Record, *, refund: int) -> None:
        if rec.ledger or rec.dead:
            try:
                if rec.dead:  # ledger and dead letters together or not at all
                    async with self.pool.acquire() as pg, pg.transaction():
                        await _write_rows(pg, conn.id, rec)
                else:  # the common case: one statement, atomic by itself
                    await _write_rows(self.pool, conn.id, rec)
            except DB_ERRORS as exc:
                # Nothing recorded: give everything back; the CRM calls were idempotent.
                log.warning("worker.record_failed", connection=conn.id, error=str(exc))
                await self.store.finish(claim, release=claim.ids, block=rec.block_for)
                return
        await self.store.finish(
            claim,
            ack=rec.ack,
            refund=max(0, refund),
            retry=rec.retry,
            release=rec.release,
            outcomes=rec.outcomes,
            counters=rec.counts,
            block=rec.block_for,
        )

    async def _renew(self, claim: Claim) -> None:
        interval = self.lease_ms / 3000.0
        while True:
            await asyncio.sleep(interval)
            with contextlib.suppress(RedisError, OSError):
                await self.store.renew(claim, claim.ids, self.lease_ms)
