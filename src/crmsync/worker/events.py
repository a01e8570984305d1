"""What operators hear from a worker: the events that change a connection's course.

One warning per event per claim at most (never one per request): the
connection paused (with the CRM's words), blocked by a CRM's 429 (with the
wait and why) or by its quota headers, its breaker opened or closed, and the
dead letters the claim wrote. The CRM-wide breaker's transitions are logged by
``crm_gate``. Every line goes through the structured logger of
``crmsync.logs`` (and so through its redaction).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from crmsync.connections import Connection
from crmsync.worker.outcome import Outcome

QUOTA_LOG_SECONDS = 1.0  # shorter quota pauses are the limiter's routine, not news
DEAD_IDS_LOGGED = 5


def claim_done(
    log: Any, conn: Connection, out: Outcome, breaker: str | None, *, probe: bool
) -> None:
    """Log what this claim changed for its connection (``breaker``: the state its
    report left the connection's breaker in, "opened" when it opened it)."""
    where = {"connection": conn.id, "crm": conn.crm, "tenant": conn.tenant}
    if out.pause is not None:
        log.warning("connection.paused", **where, reason=out.pause)
    if out.limited_for:
        log.warning(
            "connection.rate_limited",
            **where,
            wait_s=round(out.limited_for, 3),
            reason=out.limited_why,
        )
    if out.block_for >= QUOTA_LOG_SECONDS:
        log.warning("connection.quota_spent", **where, wait_s=round(out.block_for, 3))
    if breaker == "opened":
        failed = sum(1 for ok in out.outcomes if not ok)
        log.warning("connection.breaker_opened", **where, failed_requests=failed, probe=probe)
    elif probe and breaker == "closed":
        log.warning("connection.breaker_closed", **where)
    if out.dead:
        codes = Counter(d.error_code or "none" for d in out.dead)
        log.warning(
            "connection.dead_lettered",
            **where,
            count=len(out.dead),
            contacts=[d.contact_id for d in out.dead[:DEAD_IDS_LOGGED]],
            error_codes=dict(codes),
            error=out.dead[0].error,
        )
