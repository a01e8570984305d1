"""Sorting a claim's answers into what it writes back.

Pure: no I/O. Each request's result (a ``SendResult`` or the ``CrmError`` the
send raised) is sorted into ledger rows, dead letters, acknowledgements,
retries, releases, breaker outcomes and counters, gathered per claim in one
``Outcome`` so the claim records them set-based (one ledger statement, one
Redis round trip). The rules, as DESIGN.md states them:

- success: ledger ``synced`` (``deleted`` for a delete) with the CRM's id and
  the version sent; acknowledged. Only an answer that confirms the record is
  one (the adapters' parsing sees to it; an answer that is not one result per
  record here is malformed for every record of the request).
- retryable (5xx, timeout, connection error, a malformed answer, a record's
  retryable code, a send that raised): ledger ``retrying`` with the attempt
  count and the error; back to the queue after the retry policy's delay.
  Retries exhausted: dead letter.
- permanent (other 4xx): dead letter at once, with the CRM's code and message.
- rate limited by the CRM (429, REQUEST_LIMIT_EXCEEDED), or no permit of our
  own limiter in time: released, not an attempt; a CRM's wait blocks the
  connection for every worker.
- auth failed (401 with a fresh token, a token endpoint's refusal): the
  connection is paused, once per claim; released. A 401 for a token already
  replaced (``TokenReplaced``): released, not an attempt, no pause.
Those are the only ways work goes back without an attempt. Breaker failures:
5xx, timeouts, connection errors and malformed answers (the CRM misbehaved);
not a 4xx, nor a send crmsync itself could not handle (``Unhandled``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

from crmsync import counters
from crmsync.crm.answer import clean
from crmsync.crm.auth import auth_pause_reason
from crmsync.crm.base import Op, SendResult
from crmsync.crm.quota import Usage
from crmsync.errors import (
    AuthFailed,
    CrmError,
    Malformed,
    RateLimited,
    Retryable,
    TokenReplaced,
    Unhandled,
)
from crmsync.model import Claimed, DeadLetter, LedgerWrite
from crmsync.retry import RetryPolicy
from crmsync.worker.permits import NoPermit
from crmsync.worker.plan import Plan, Request

DONE = {"create": counters.CREATED, "update": counters.UPDATED, "delete": counters.DELETED}


@dataclass
class Outcome:
    """Everything one claim writes back."""

    ledger: list[LedgerWrite] = field(default_factory=list)
    dead: list[DeadLetter] = field(default_factory=list)
    ack: list[str] = field(default_factory=list)
    retry: dict[str, float] = field(default_factory=dict)  # contact id -> seconds
    release: list[str] = field(default_factory=list)
    outcomes: list[bool] = field(default_factory=list)  # per request: False = CRM failure
    counts: Counter[str] = field(default_factory=Counter)
    pause: str | None = None  # why the connection must be paused (a 401 of this claim)
    limited_for: float = 0.0  # longest wait a CRM's 429 of this claim asked for
    limited_why: str | None = None  # the CRM's words for that 429
    block_for: float = 0.0  # longest pause the CRM's quota headers asked for
    learnt: Usage | None = None  # the most used of the CRM's daily budget an answer told
    sent: int = 0  # requests sent (each on a permit of the claim)

    @classmethod
    def of_plan(cls, plan: Plan) -> Outcome:
        """What the plan settled without a request (noops and skips)."""
        out = cls(ledger=list(plan.skipped), ack=list(plan.acks))
        if plan.skipped:
            out.counts[counters.SKIPPED] += len(plan.skipped)
        return out

    @classmethod
    def failed(cls, items: Iterable[Claimed], err: CrmError, policy: RetryPolicy) -> Outcome:
        """Every claimed contact failed with ``err`` before anything was sent (the
        claim could not be planned): each gets its attempt."""
        out = cls()
        for it in items:
            fail(out, op_of(it), it, err, policy)
        return out

    def release_requests(self, requests: Iterable[Request]) -> None:
        """Requests this claim will not send: their ids go back, no attempt."""
        for req in requests:
            self.release.extend(op.contact_id for op in req.ops)

    def merge(self, other: Outcome) -> None:
        self.ledger += other.ledger
        self.dead += other.dead
        self.ack += other.ack
        self.retry.update(other.retry)
        self.release += other.release
        self.outcomes += other.outcomes
        self.counts.update(other.counts)
        self.pause = self.pause or other.pause
        if other.limited_for > self.limited_for:
            self.limited_for, self.limited_why = other.limited_for, other.limited_why
        self.block_for = max(self.block_for, other.block_for)


def op_of(it: Claimed) -> Op:
    """What the claim would have sent for ``it``, for its outcome when nothing was sent."""
    ext = it.ledger.external_id if it.ledger else None
    if it.contact is None or it.contact.deleted:
        return Op("delete", it.contact_id, None, ext)
    return Op("update" if ext else "create", it.contact_id, it.contact, ext)


def unhandled(exc: BaseException, doing: str) -> Unhandled:
    """An exception crmsync did not expect while ``doing`` something, as the error
    of the records concerned (a bug met an unusual case: retried, then dead)."""
    detail = clean(f"{type(exc).__name__}: {exc}", 300)
    return Unhandled(f"crmsync failed while {doing}: {detail}", code="UNHANDLED")


def sort_result(
    out: Outcome,
    req: Request,
    res: SendResult | CrmError,
    policy: RetryPolicy,
    acked_ms: float | None = None,
) -> None:
    """Sort one request's result into ``out``; ``acked_ms``: when the answer came
    (the end of each synced change's lag from its commit). Total: whatever goes
    wrong while sorting is the request's error, counted for each of its records."""
    sorted_ = Outcome()
    try:
        _sort(sorted_, req, res, policy, acked_ms)
    except Exception as exc:  # a bug must not hold the records back forever
        sorted_ = Outcome(counts=Counter({counters.REQUESTS: 1}))
        sorted_.outcomes.append(True)
        err = unhandled(exc, "sorting the CRM's answer")
        for op in req.ops:
            fail(sorted_, op, req.items[op.contact_id], err, policy)
    out.merge(sorted_)


def _sort(
    out: Outcome,
    req: Request,
    res: SendResult | CrmError,
    policy: RetryPolicy,
    acked_ms: float | None,
) -> None:
    if isinstance(res, NoPermit):
        # Our own limiter had no room in time: nothing was sent, no attempt.
        out.release.extend(req.contact_ids)
        out.outcomes.append(True)
        return
    out.counts[counters.REQUESTS] += 1
    if isinstance(res, RateLimited):
        # Everyone waits (after the claim's outcomes); no attempt.
        if res.retry_after > out.limited_for:
            out.limited_for = res.retry_after
            out.limited_why = f"{res.code}: {res.message}" if res.code else res.message
        out.counts[counters.RATE_LIMITED] += 1
        out.release.extend(req.contact_ids)
        out.outcomes.append(True)
        return
    if isinstance(res, AuthFailed):
        if isinstance(res, TokenReplaced):
            # Sent with a token already replaced: again with the new one, no attempt.
            out.counts[counters.TOKEN_REPLACED] += 1
        elif out.pause is None:  # once per claim, not once per request of it
            out.pause = auth_pause_reason(res)
            out.counts[counters.AUTH_PAUSES] += 1
        out.release.extend(req.contact_ids)
        out.outcomes.append(True)
        return
    if isinstance(res, CrmError):
        out.outcomes.append(not failure(res))
        for op in req.ops:
            fail(out, op, req.items[op.contact_id], res, policy)
        return
    if [r.contact_id for r in res.results] != req.contact_ids:
        # Not one result per record, in order: nothing can be told of any of them.
        mismatch = Malformed("the adapter's answer does not match the request record by record")
        out.outcomes.append(False)
        for op in req.ops:
            fail(out, op, req.items[op.contact_id], mismatch, policy)
        return
    # A record's own retryable code (a row lock) is an answer; a record the
    # answer does not confirm is the CRM misbehaving.
    out.outcomes.append(not any(isinstance(r.error, Malformed) for r in res.results))
    if res.block_for:  # held back with the claim's hand-back
        out.block_for = max(out.block_for, res.block_for)
    for op, r in zip(req.ops, res.results, strict=True):
        it = req.items[op.contact_id]
        if r.ok:
            version = it.contact.version if it.contact else None
            status = "deleted" if op.kind == "delete" else "synced"
            out.ledger.append(
                LedgerWrite(op.contact_id, r.external_id, version, status, None, 0, None)
            )
            out.ack.append(op.contact_id)
            out.counts[DONE[op.kind]] += 1
            if acked_ms is not None and it.committed_ms is not None:
                counters.record_sync_lag(out.counts, it.committed_ms, acked_ms)
        else:
            failed: CrmError = r.error or Malformed("CRM reported failure without an error")
            fail(out, op, it, failed, policy)


def failure(err: CrmError) -> bool:
    """Whether ``err`` counts as a breaker failure: the CRM failed or misbehaved."""
    return isinstance(err, Retryable) and not isinstance(err, Unhandled)


def fail(out: Outcome, op: Op, it: Claimed, err: CrmError, policy: RetryPolicy) -> None:
    """One record failed: retry it later, or dead-letter it (permanent, or out of attempts)."""
    attempts = it.attempts + 1
    text = clean(err.message, 1000)
    message = f"{clean(err.code, 100)}: {text}" if err.code else text
    if isinstance(err, Retryable) and not policy.exhausted(attempts):
        out.ledger.append(
            LedgerWrite(op.contact_id, None, None, "retrying", None, attempts, message)
        )
        out.retry[op.contact_id] = policy.delay(attempts)
        out.counts[counters.RETRIED] += 1
        return
    out.ledger.append(LedgerWrite(op.contact_id, None, None, "dead", None, attempts, message))
    version = it.contact.version if it.contact else None
    payload = op.contact.fields() if op.contact is not None else {"external_id": op.external_id}
    code = clean(err.code, 100) if err.code else None
    out.dead.append(
        DeadLetter(op.contact_id, version, op.kind, code, text, err.status, payload, attempts)
    )
    out.ack.append(op.contact_id)
    out.counts[counters.DEAD] += 1
