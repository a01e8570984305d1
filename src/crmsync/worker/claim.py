"""One claim of one connection: claim → load → plan → send → sort → record.

1. Claim: the CRM-wide breaker gate allows it (a half-open probe carries one
   request); the claim script leases up to ``want`` requests' worth of ids
   with their permits, or refuses and names when to come back. The connection
   goes back to the scheduler at once; slots not granted are freed.
2. Load: one statement reads every claimed id's current contact and ledger row.
3. Plan: the rules decide per contact; sends are grouped into requests. More
   requests than permits: the rest are released (no attempt).
4. Send: every request at once, each through its connection's in-flight gate,
   on its permit (``permits.py``), the adapter reporting the write. Where
   several requests would each look their records up first (Salesforce's
   creates by email), one prefetch on a permit of its own does it for all.
5. Sort each result (``outcome.py``); pause the connection on a 401 (once),
   block it for everyone on a CRM's 429 (once, and slowed for a while).
6. Record: ledger rows and dead letters first, in PostgreSQL; then one Redis
   round trip acknowledges, refunds unsent permits, schedules retries, releases,
   reports to the per-connection breaker and adds the counters. Ledger before
   acknowledgement: a crash in between lets the lease expire and the same
   idempotent upsert go again; a ledger write that fails releases every id.

The lease is renewed while the claim runs. Anything that stops a claim midway
(Redis or PostgreSQL failing, shutdown) gives its ids back, no attempt burned.
Anything else that raises while a claim is handled (a bug meeting an unusual
answer or contact) is caught at one place per step and becomes the outcome of
the ids concerned (``Unhandled``: an attempt with the error text, the retry
policy, dead letters at the end), so no id goes back to the queue for ever.

Operators hear what changes a connection's course, once per claim at most, as
warnings (``crmsync.logs``, see ``events.py``): a pause, a 429 block and its
wait, breakers opening and closing, dead letters.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from functools import partial

from crmsync import counters, crm_limits
from crmsync.clock import Clock
from crmsync.connections import Connection
from crmsync.crm.base import CrmAdapter, Op, SendResult
from crmsync.crm.http import WriteWatch
from crmsync.crm.quota import Usage
from crmsync.errors import CrmError, Retryable
from crmsync.logs import get_logger
from crmsync.queue.store import Claim
from crmsync.redis_client import REDIS_ERRORS
from crmsync.retry import RetryPolicy
from crmsync.settings import Settings
from crmsync.worker import events
from crmsync.worker.crm_gate import CrmGate
from crmsync.worker.heal import HEAL_RETRY_MS, LOSS_REFUSALS, Healer
from crmsync.worker.inflight import Gate, InFlight
from crmsync.worker.outcome import Outcome, sort_result, unhandled
from crmsync.worker.permits import ClaimPermits, NoPermit, Permits
from crmsync.worker.plan import Plan, Request, plan_claim
from crmsync.worker.ports import Ledger, LedgerUnavailable, Store
from crmsync.worker.slots import Slots

# A claim's work is released (or its lease expires) when one of these stops it.
_ABORTS: tuple[type[Exception], ...] = (*REDIS_ERRORS, LedgerUnavailable)
# Asking the CRM for its daily usage, and learning it, may fail like this.
_USAGE_ERRORS: tuple[type[Exception], ...] = (CrmError, TimeoutError, *REDIS_ERRORS)

log = get_logger(__name__)

CLAIM_RETRY_MS = 1000  # a claim that failed (Redis down or flushed) is tried again this soon
PREFETCH_MAX = 200  # records one prefetch looks up (a Salesforce query's IN list)


def _nothing() -> None:
    """A write nobody needs to hear of (no rate-limit permits to move)."""


class Claims:
    """Runs the claims of one worker process, each in a task of its own."""

    def __init__(
        self,
        settings: Settings,
        *,
        clock: Clock,
        store: Store,
        ledger: Ledger,
        crm_gate: CrmGate,
        permits: Permits,
        inflight: InFlight,
        slots: Slots,
        healer: Healer | None = None,
    ) -> None:
        self.clock = clock
        self.healer = healer
        self.store = store
        self.ledger = ledger
        self.crm_gate = crm_gate
        self.permits = permits
        self.inflight = inflight
        self.slots = slots
        self.batch_size = settings.batch_size
        self.lease_ms = int(settings.lease_seconds * 1000)
        self.recovery_ms = settings.breaker_recovery_seconds * 1000
        self.max_block_seconds = settings.max_block_seconds
        self.policy = RetryPolicy.from_settings(settings)
        self.tasks: set[asyncio.Task[None]] = set()

    def start(self, conn: Connection, adapter: CrmAdapter, want: int) -> None:
        """Run a claim of ``want`` reserved slots in its own task."""
        task = asyncio.create_task(self.run(conn, adapter, want))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def drain(self, grace_seconds: float) -> None:
        """Stop: give the claims in flight the grace period, then cancel the
        rest (each releases its ids)."""
        if self.tasks:
            _, pending = await asyncio.wait(self.tasks, timeout=grace_seconds)
            for t in pending:
                t.cancel()
            if pending:
                await asyncio.wait(pending, timeout=5.0)
        await self.permits.drain(grace_seconds=5.0)

    async def run(self, conn: Connection, adapter: CrmAdapter, want: int) -> None:
        """One claim, holding ``want`` slots until it knows its permits."""
        held = want
        batch = conn.batch_size(self.batch_size, adapter.max_batch)
        try:
            try:
                verdict = await self.crm_gate.ask(conn.crm)
                if not verdict.allowed:
                    self.slots.retry_at(conn.id, verdict.retry_at_ms, self.clock.now_ms())
                    return
                sent_ms = self.clock.local_ms()
                claim = await self.store.claim(
                    conn.id,
                    max_requests=1 if verdict.probe else want,
                    batch_size=batch,
                    lease_ms=self.lease_ms,
                    backdate_ms=self.permits.backdate_ms,
                    lineage=self.healer.lineage(conn.id) if self.healer else "",
                )
                self.clock.observe(claim.redis_ms, sent_ms, self.clock.local_ms())
                if claim.refused in LOSS_REFUSALS and self.healer is not None:
                    # Redis lost the connection's state: rebuild it (one worker
                    # does; the others come back in a moment and find it done).
                    await self.healer.heal(conn)
                    now = self.clock.now_ms()
                    self.slots.retry_at(conn.id, now + HEAL_RETRY_MS, now)
                    return
            except Exception as exc:  # Redis down or flushed mid-call: try again soon
                log.warning("worker.claim_failed", connection=conn.id, error=str(exc))
                now = self.clock.now_ms()
                self.slots.retry_at(conn.id, now + CLAIM_RETRY_MS, now)
                return
            self.slots.claimed(claim, held, self.clock.now_ms())
            held = claim.permits
            if claim.refused == "budget":
                await self._relearn(conn, adapter, claim)
            if not claim.ids:
                return
            try:
                outcomes, tripped = await self._process(conn, adapter, claim, batch)
            except _ABORTS as exc:
                # The work was released (or its lease will expire): nothing lost.
                log.warning("worker.claim_aborted", connection=conn.id, error=str(exc))
                return
            await self.crm_gate.report(
                conn.crm, outcomes, probe=verdict.probe, tripped=tripped, connection=conn.id
            )
        except REDIS_ERRORS as exc:  # the CRM-wide breaker's Redis
            log.warning("worker.claim_aborted", connection=conn.id, error=str(exc))
        except Exception:
            # What _process could not turn into outcomes (a bug in recording them):
            # its ids were given back; say so loudly, once.
            log.exception("worker.claim_crashed", connection=conn.id)
        finally:
            self.slots.free(conn.id, held)

    async def _relearn(self, conn: Connection, adapter: CrmAdapter, claim: Claim) -> None:
        """A rolling daily budget spent (or not learnt yet) by what we know: ask the
        CRM how it stands now (Salesforce's ``/limits``; an org's use rolls off
        with no answer telling us); requests still in flight may not be in its count."""
        spec = conn.crm_spec
        ask = getattr(adapter, "daily_usage", None)
        if spec is None or spec.kind != "rolling" or ask is None:
            return
        try:
            usage = await ask()
            if isinstance(usage, Usage) and usage.daily:
                await self.store.learn(conn.id, usage)
        except _USAGE_ERRORS as exc:
            log.info("worker.budget_unknown", connection=conn.id, error=str(exc))

    async def _process(
        self, conn: Connection, adapter: CrmAdapter, claim: Claim, batch: int
    ) -> tuple[list[bool], bool]:
        """Load, plan, send, sort, record: the breaker outcomes of its requests, and
        whether they opened the connection's breaker."""
        renew = asyncio.create_task(self._renew(claim))
        done = False
        try:
            try:
                items = await self.ledger.load(conn.id, conn.tenant, claim.ids)
            except LedgerUnavailable:
                await self.store.release(claim, claim.ids)
                done = True
                return [], False
            try:
                plan: Plan | None = plan_claim(
                    conn.crm, items, batch, claim.unknown, adapter.missing
                )
            except Exception as exc:  # a bug met a contact: each id gets its attempt
                log.exception("worker.plan_failed", connection=conn.id)
                plan = None
                out = Outcome.failed(items, unhandled(exc, "deciding what to send"), self.policy)
            if plan is not None:
                out, claim = await self._send_plan(conn, adapter, claim, plan)
            self._crm_holds(conn, out)
            # Paused for good in PostgreSQL unless an operator replaced the
            # credentials meanwhile (this claim may still hold the old ones), then
            # in Redis for every worker at once.
            rev = conn.auth.rev or None
            if out.pause is not None and await self.ledger.pause(conn.id, out.pause, rev):
                await self.store.pause(conn.id, out.pause)
            elif out.pause is not None:
                out.pause = None  # new credentials came meanwhile: not paused
            if out.limited_for:
                # The CRM's view of the limit differs from ours: everyone waits
                # (and runs slower for a while), at once, one call for the claim.
                why = out.limited_why or "rate limited by the CRM"
                await self.store.block(conn.id, out.limited_for, slow=True, reason=why)
            breaker = await self._record(conn, claim, out, refund=claim.permits - out.sent)
            done = True
            # A failed probe re-opens: the same outage, not one more failing connection;
            # the next probe is one recovery time away.
            tripped = breaker == "opened" and not claim.probe
            if breaker == "opened" and claim.probe:
                self.slots.sooner(conn.id, self.clock.now_ms() + self.recovery_ms)
            events.claim_done(log, conn, out, breaker, probe=claim.probe)
            return out.outcomes, tripped
        finally:
            renew.cancel()
            if not done:
                # Cancelled (shutdown) or failed: give the work back, no attempt burned.
                with contextlib.suppress(Exception):
                    await asyncio.shield(self.store.release(claim, claim.ids))

    def _crm_holds(self, conn: Connection, out: Outcome) -> None:
        """Under the CRM's own limit model, how long a refusal or a spent budget
        holds the connection is the model's (crm_limits.hold_seconds)."""
        spec = conn.crm_spec
        if spec is None or not (out.limited_for or out.block_for):
            return
        now = int(self.clock.now_ms())
        u = out.learnt
        spent = u is not None and u.daily and (u.used or 0) >= (u.most or 0)
        hold = partial(crm_limits.hold_seconds, spec, now_ms=now, most=self.max_block_seconds)
        if out.limited_for:
            out.limited_for = hold(out.limited_for, out.limited_why, daily=spent)
        if out.block_for:
            out.block_for = hold(out.block_for, None, daily=spent)

    async def _send_plan(
        self, conn: Connection, adapter: CrmAdapter, claim: Claim, plan: Plan
    ) -> tuple[Outcome, Claim]:
        """Send what the plan holds, on the claim's permits; each request's result
        sorted into the claim's outcome. The claim as re-admitted, if it was."""
        out = Outcome.of_plan(plan)
        sent = plan.requests[: claim.permits]
        out.release_requests(plan.requests[claim.permits :])
        if sent:
            # The prefetch first: its time counts toward the re-admission below.
            await self._prefetch(conn, adapter, sent, out)
            # Re-admitted at the time of sending when the read (or the prefetch)
            # took long.
            claim = await self.permits.readmit_if_late(claim, len(sent))
            out.release_requests(sent[claim.permits :])
            sent = sent[: claim.permits]
        out.sent = len(sent)
        if sent:
            now = self.clock.now_ms()
            out.counts[counters.latency_field(now - claim.admitted_ms, "lag")] += len(sent)
            self.inflight.sending(conn.id, now)
        gate = self.inflight.gate(conn)
        # No windows: no permits to move or take.
        permits = ClaimPermits(conn.id, claim.admitted_ms, len(sent)) if conn.windows else None
        results = await asyncio.gather(*(self._send(adapter, r.ops, permits, gate) for r in sent))
        acked_ms = self.clock.now_ms()
        for req, (res, ms, waited, calls, usage) in zip(sent, results, strict=True):
            if usage is not None and (out.learnt is None or _more(usage, out.learnt)):
                out.learnt = usage
            out.counts[counters.latency_field(ms)] += 1
            out.counts[counters.HELD] += waited
            sort_result(out, req, res, self.policy, acked_ms)
            # A send may take more than one request (a lookup first, an update
            # after a conflict): the CRM counts each.
            out.counts[counters.REQUESTS] += max(0, calls - (0 if isinstance(res, NoPermit) else 1))
        return out, claim

    async def _prefetch(
        self, conn: Connection, adapter: CrmAdapter, sent: Sequence[Request], out: Outcome
    ) -> None:
        """One lookup for the records several requests of the claim would each look
        up first (Salesforce's creates by email, ``match=email``), on a permit of
        its own: in single-record mode a claim's creates cost one query, not one
        each. Without it (no room for its permit at once, the CRM failed) each
        send looks up for itself, as it would have."""
        if len(sent) < 2:
            return
        wanted = [op for r in sent for op in adapter.lookups(r.ops)]
        if len({op.contact_id for op in wanted}) < 2 or len(wanted) > PREFETCH_MAX:
            return
        watch = WriteWatch(_nothing)
        # A request like the sends: it holds a place at the in-flight gate and
        # waits for a token being refreshed (else, beside a send, a second
        # request would meet an expired token).
        gate = self.inflight.gate(conn)
        await gate.acquire()
        try:
            await adapter.ready()
            if conn.windows:
                # No waiting for room: without a permit now, each send looks up itself.
                admitted = await self.permits.try_take(conn.id)
                if admitted is None:
                    return
                watch = self.permits.watch(conn.id, admitted)
            await adapter.prefetch(wanted, watch)
        except CrmError:
            pass  # each send looks up for itself (and meets the CRM's error there)
        except Exception:
            log.exception("worker.prefetch_failed", connection=conn.id)
        finally:
            gate.release()
            out.counts[counters.REQUESTS] += watch.calls

    async def _send(
        self,
        adapter: CrmAdapter,
        ops: Sequence[Op],
        permits: ClaimPermits | None,
        gate: Gate,
    ) -> tuple[SendResult | CrmError, float, bool, int, Usage | None]:
        """(outcome, answer time ms, whether it waited at the in-flight gate, HTTP
        requests it took, what the CRM said of its budget). ``permits``: the claim's,
        for a connection with rate limits."""
        waited = await gate.acquire()
        t0 = self.clock.monotonic()
        watch = WriteWatch(_nothing)  # counts the send's requests; no permits to move
        try:
            # A token being refreshed holds the request like the gate: its permits
            # are re-taken for when it goes out.
            waited = await adapter.ready() or waited
            if permits is not None:
                admitted = await self.permits.admission(permits, waited)
                if admitted is None:
                    raise NoPermit("no rate-limit permit for a request held back")
                watch = self.permits.watch(permits.connection_id, admitted)
                t0 = self.clock.monotonic()
            res: SendResult | CrmError = await adapter.send(ops, watch)
        except CrmError as exc:
            res = exc
        except Exception as exc:  # the adapter met something it did not expect
            log.exception("worker.send_failed")
            res = unhandled(exc, "sending or reading the answer")
        finally:
            gate.release()
        ms = (self.clock.monotonic() - t0) * 1000.0
        if not isinstance(res, NoPermit) and not (
            isinstance(res, Retryable) and res.code == "CONNECTION"
        ):
            # A refused connection answers at once: no measure of the CRM's time.
            gate.sample(ms, self.clock.now_ms())
        return res, ms, waited, watch.calls, watch.usage

    async def _record(
        self, conn: Connection, claim: Claim, out: Outcome, *, refund: int
    ) -> str | None:
        """Ledger first, then the hand-back to Redis; the connection's breaker
        state after the claim's report."""
        why = "the CRM's quota headers say its quota is spent" if out.block_for else ""
        try:
            await self.ledger.record(conn.id, out.ledger, out.dead)
        except LedgerUnavailable:
            # Nothing recorded: give everything back; the CRM calls were idempotent.
            await self.store.finish(claim, release=claim.ids, block=out.block_for, block_reason=why)
            return None
        return await self.store.finish(
            claim,
            ack=out.ack,
            refund=max(0, refund),
            retry=out.retry,
            release=out.release,
            outcomes=out.outcomes,
            counters=out.counts,
            block=out.block_for,
            block_reason=why,
            learnt=out.learnt,
        )

    async def _renew(self, claim: Claim) -> None:
        interval = self.lease_ms / 3000.0
        while True:
            await self.clock.sleep(interval)
            with contextlib.suppress(*REDIS_ERRORS):
                await self.store.renew(claim, claim.ids, self.lease_ms)


def _more(a: Usage, b: Usage) -> bool:
    """Whether ``a`` tells of more use of the budget than ``b`` (the claim keeps one)."""
    return (a.used or -1, a.burst or 0) > (b.used or -1, b.burst or 0)
