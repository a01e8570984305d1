"""Sorting a claim's answers into what it writes back.

Pure: no I/O. Each request's result (a ``SendResult`` or the ``CrmError`` the
send raised) is sorted into ledger rows, dead letters, acknowledgements,
retries, releases, breaker outcomes and counters, gathered per claim in one
``Outcome`` so the claim records them set-based (one ledger statement, one
Redis round trip). The rules, as DESIGN.md states them:

- success: ledger ``synced`` (``deleted`` for a delete) with the CRM's id and
  the version sent; acknowledged.
- retryable (5xx, timeout, connection error, a record's retryable code): ledger
  ``retrying`` with the attempt count; back to the queue after the retry
  policy's delay. Retries exhausted: dead letter.
- permanent (other 4xx): dead letter at once, with the CRM's code and message.
- rate limited by the CRM (429, REQUEST_LIMIT_EXCEEDED), or no permit of our
  own limiter in time: released, not an attempt; a CRM's wait blocks the
  connection for every worker.
- auth failed (401 with a fresh token, a token endpoint's refusal): the
  connection is paused, once per claim; released. A 401 for a token already
  replaced (``TokenReplaced``): released, not an attempt, no pause.
Only 5xx, timeouts and connection errors count as breaker failures.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

from crmsync import counters
from crmsync.crm.auth import auth_pause_reason
from crmsync.crm.base import Op, SendResult
from crmsync.errors import AuthFailed, CrmError, Permanent, RateLimited, Retryable, TokenReplaced
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
    block_for: float = 0.0  # longest pause the CRM's quota headers asked for

    @classmethod
    def of_plan(cls, plan: Plan) -> Outcome:
        """What the plan settled without a request (noops and skips)."""
        out = cls(ledger=list(plan.skipped), ack=list(plan.acks))
        if plan.skipped:
            out.counts[counters.SKIPPED] += len(plan.skipped)
        return out

    def release_requests(self, requests: Iterable[Request]) -> None:
        """Requests this claim will not send: their ids go back, no attempt."""
        for req in requests:
            self.release.extend(op.contact_id for op in req.ops)


def sort_result(
    out: Outcome,
    req: Request,
    res: SendResult | CrmError,
    policy: RetryPolicy,
    acked_ms: float | None = None,
) -> None:
    """Sort one request's result into ``out``; ``acked_ms``: when the answer came
    (the end of each synced change's lag from its commit)."""
    if isinstance(res, NoPermit):
        # Our own limiter had no room in time: nothing was sent, no attempt.
        out.release.extend(req.contact_ids)
        out.outcomes.append(True)
        return
    out.counts[counters.REQUESTS] += 1
    if isinstance(res, RateLimited):
        # Everyone waits (after the claim's outcomes); no attempt.
        out.limited_for = max(out.limited_for, res.retry_after)
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
        out.outcomes.append(not isinstance(res, Retryable))
        for op in req.ops:
            fail(out, op, req.items[op.contact_id], res, policy)
        return
    out.outcomes.append(True)
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
            err = r.error or Permanent("CRM reported failure without an error", status=None)
            fail(out, op, it, err, policy)


def fail(out: Outcome, op: Op, it: Claimed, err: CrmError, policy: RetryPolicy) -> None:
    """One record failed: retry it later, or dead-letter it (permanent, or out of attempts)."""
    attempts = it.attempts + 1
    message = f"{err.code}: {err.message}" if err.code else err.message
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
    out.dead.append(
        DeadLetter(
            op.contact_id, version, op.kind, err.code, err.message, err.status, payload, attempts
        )
    )
    out.ack.append(op.contact_id)
    out.counts[counters.DEAD] += 1
