"""Circuit breakers: the transition table, and the per-CRM breaker in Redis.

closed --N consecutive failures--> open --recovery elapsed, first ask--> half_open
(exactly one probe, cluster-wide) --probe ok--> closed / --probe failed--> open.
Only 5xx, timeouts and connection errors are failures; the caller decides.

``transition`` is the table; the Lua helpers in ``queue/lua/_lib.lua`` (used by
the per-connection breaker inside the claim script and by ``CrmBreaker``)
implement the same table, and the tests run both against the same cases.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal

from redis.asyncio import Redis

from crmsync.queue import keys
from crmsync.queue.scripts import Arg, Scripts

State = Literal["closed", "open", "half_open"]
Event = Literal["allow", "success", "failure"]
Verdict = Literal["allow", "probe", "refuse"]


@dataclass(frozen=True)
class BreakerConfig:
    threshold: int = 5
    recovery_ms: int = 30_000
    probe_ms: int = 30_000  # how long the single probe may take to report


@dataclass(frozen=True)
class BreakerState:
    state: State = "closed"
    failures: int = 0
    opened_ms: int = 0
    probe_until_ms: int = 0


def transition(s: BreakerState, event: Event, now_ms: int, cfg: BreakerConfig) -> BreakerState:
    """The breaker's state after ``event`` at ``now_ms``."""
    if event == "allow":
        if s.state == "closed":
            return s
        if s.state == "open" and now_ms < s.opened_ms + cfg.recovery_ms:
            return s
        if s.state == "half_open" and now_ms < s.probe_until_ms:
            return s
        # Recovered, or the previous probe never reported: this ask is the probe.
        return replace(s, state="half_open", probe_until_ms=now_ms + cfg.probe_ms)
    ok = event == "success"
    if s.state == "open":
        return s  # late outcomes of requests sent before the trip change nothing
    if s.state == "closed":
        if ok:
            return replace(s, failures=0)
        if s.failures + 1 < cfg.threshold:
            return replace(s, failures=s.failures + 1)
        return BreakerState("open", s.failures + 1, now_ms, 0)
    if ok:
        return BreakerState("closed", 0, s.opened_ms, 0)
    return BreakerState("open", s.failures, now_ms, 0)


def verdict(before: BreakerState, after: BreakerState) -> Verdict:
    """What an ``allow`` event that led from ``before`` to ``after`` answers."""
    if after.state == "closed":
        return "allow"
    if after != before:
        return "probe"
    return "refuse"


def retry_at_ms(s: BreakerState, cfg: BreakerConfig) -> int | None:
    """When a refused caller should ask again."""
    if s.state == "open":
        return s.opened_ms + cfg.recovery_ms
    if s.state == "half_open":
        return s.probe_until_ms
    return None


def _text(v: object) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


class CrmBreaker:
    """One breaker per CRM, shared by every worker through Redis.

    Failures count across all connections of the CRM; any success resets them.
    In half-open the first ``record`` decides (its caller holds the probe).
    """

    def __init__(
        self,
        redis: Redis,
        *,
        threshold: int = 5,
        recovery_ms: int = 30_000,
        probe_ms: int = 30_000,
    ) -> None:
        self.redis = redis
        self.scripts = Scripts(redis)
        self.cfg = BreakerConfig(threshold, recovery_ms, probe_ms)

    async def allow(self, crm: str) -> bool | Literal["probe"]:
        """True: send; "probe": send, you are the one half-open probe; False: wait."""
        v = await self._run(crm, "allow", "")
        if v == "probe":
            return "probe"
        return v == "allow"

    async def record(self, crm: str, outcomes: Sequence[bool]) -> None:
        """Outcomes of sent requests: True ok, False 5xx / timeout / connection error."""
        if outcomes:
            await self._run(crm, "record", "".join("1" if ok else "0" for ok in outcomes))

    async def state(self, crm: str) -> BreakerState:
        raw = await self.redis.hmget(
            keys.crm_breaker(crm), ["br_state", "br_failures", "br_opened_ms", "br_probe_until"]
        )
        st = _text(raw[0]) if raw[0] is not None else "closed"
        return BreakerState(
            "open" if st == "open" else "half_open" if st == "half_open" else "closed",
            int(raw[1] or 0),
            int(raw[2] or 0),
            int(raw[3] or 0),
        )

    async def _run(self, crm: str, op: str, outcomes: str, now_ms: int | None = None) -> str:
        """``now_ms`` replaces Redis TIME in table tests only."""
        cfg = self.cfg
        args: list[Arg] = [op, cfg.threshold, cfg.recovery_ms, cfg.probe_ms]
        args += ["" if now_ms is None else now_ms, outcomes]
        return _text(await self.scripts.call("breaker", [keys.crm_breaker(crm)], args))
