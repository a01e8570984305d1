"""The CRM-wide circuit breaker, as one worker process asks it.

The breaker itself lives in Redis (``crmsync.breaker.CrmBreaker``, one per CRM,
shared by every worker); the per-connection breaker is inside the claim script.
Asking Redis before every claim would double the round trips of the hot path,
so this gate caches the verdict: a closed breaker is asked again after
``CLOSED_RECHECK_MS``, an open one not before its recovery time (or the probe's
deadline). When the breaker lets exactly one probe through (half-open), that
claim carries one request, and its outcome decides.

The CRM-wide breaker hears connections, not requests, and only connections
that worked: a claim that opened its connection's breaker is one failure when
that connection had answered well within ``SUSPECT_MS`` in this process, and a
claim with any success is one success. So it opens only when ``threshold``
working connections of the CRM failed in a row with no success anywhere in
between: one account that misbehaves (a bad base URL, an account-specific
outage, hostile answers) opens its own breaker and never holds back the CRM's
other accounts. The CRM's half-open probe is one request and decides as one,
but a failed probe of a connection that has not worked lately proves nothing
about the CRM: it is not reported, and the probe's slot expires.

Outcomes are reported only while they can matter: a failure, a probe, or a
success of a CRM that failed in this process within ``SUSPECT_MS`` (a success
resets the breaker's failure count; otherwise it has nothing to reset).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from crmsync.clock import Clock
from crmsync.logs import get_logger
from crmsync.worker.ports import Breaker

log = get_logger(__name__)

CLOSED_RECHECK_MS = 50.0
SUSPECT_MS = 60_000.0


@dataclass(frozen=True, slots=True)
class Verdict:
    allowed: bool  # the claim may go ahead
    probe: bool  # it is the CRM's one half-open probe: one request only
    retry_at_ms: float  # when to ask again if not allowed (Redis time)


class CrmGate:
    def __init__(self, breaker: Breaker, clock: Clock) -> None:
        self.breaker = breaker
        self.clock = clock
        # crm -> (valid until ms, allowed)
        self._cache: dict[str, tuple[float, bool]] = {}
        self._failed_at: dict[str, float] = {}
        self._worked_at: dict[str, float] = {}  # connection id -> its last success here

    async def ask(self, crm: str) -> Verdict:
        now = self.clock.now_ms()
        cached = self._cache.get(crm)
        if cached is not None and cached[0] > now:
            return Verdict(cached[1], False, cached[0])
        verdict = await self.breaker.allow(crm)
        if verdict == "probe":
            return Verdict(True, True, now)
        if verdict:
            self._cache[crm] = (now + CLOSED_RECHECK_MS, True)
            return Verdict(True, False, now)
        st = await self.breaker.state(crm)
        recovery_ms = self.breaker.cfg.recovery_ms
        until = max(st.opened_ms + recovery_ms, st.probe_until_ms, now + CLOSED_RECHECK_MS)
        self._cache[crm] = (until, False)
        log.debug("worker.crm_circuit_open", crm=crm, retry_at_ms=until)
        return Verdict(False, False, until)

    def _suspect(self, crm: str) -> bool:
        """This process saw a failure of the CRM lately (or the gate is not open)."""
        cached = self._cache.get(crm)
        if cached is not None and not cached[1]:
            return True
        failed = self._failed_at.get(crm)
        return failed is not None and self.clock.now_ms() - failed < SUSPECT_MS

    def _worked(self, connection: str) -> bool:
        at = self._worked_at.get(connection)
        return at is not None and self.clock.now_ms() - at < SUSPECT_MS

    async def report(
        self,
        crm: str,
        outcomes: Sequence[bool],
        *,
        probe: bool,
        tripped: bool = False,
        connection: str = "",
    ) -> None:
        """A claim's breaker outcomes (True answered, False failed or misbehaved),
        whether they opened its connection's breaker (``tripped``), and which
        connection it was. A probe that sent nothing proves nothing: its slot expires."""
        evidence = self._worked(connection) or True in outcomes
        if True in outcomes:
            self._worked_at[connection] = self.clock.now_ms()
        if probe:
            heard = list(outcomes) if evidence else []
        elif tripped:
            heard = [False] if evidence else []
        else:
            heard = [True] if True in outcomes else []
        if not heard or not (probe or False in heard or self._suspect(crm)):
            return
        state = await self.breaker.record(crm, heard)
        if False in heard:
            self._failed_at[crm] = self.clock.now_ms()
            self._cache.pop(crm, None)
            if state == "open":
                log.warning("crm.breaker_opened", crm=crm, connection=connection, probe=probe)
        elif probe and state == "closed":
            log.warning("crm.breaker_closed", crm=crm)
