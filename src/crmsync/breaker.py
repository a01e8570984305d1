"""CircuitBreaker: its states, and the per-CRM breaker in Redis (``CrmBreaker``).

closed --N consecutive failures--> open --recovery elapsed, first ask--> half_open
(exactly one probe, cluster-wide) --probe ok--> closed / --probe failed--> open.
Only 5xx, timeouts, connection errors and answers that do not confirm the record
are failures; the caller (``worker/outcome.py``) decides.

The breaker is implemented once, in Lua (``queue/lua/_lib.lua``): the
per-connection breaker inside the claim script and ``CrmBreaker`` share it.
Its table lives with the tests (``tests/oracles/breaker.py``), which run the
Lua breaker against it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from crmsync.queue import keys
from crmsync.queue.scripts import Arg, Scripts
from crmsync.redis_client import RedisClient

State = Literal["closed", "open", "half_open"]


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


def _text(v: object) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


class CrmBreaker:
    """One breaker per CRM, shared by every worker through Redis.

    Failures count across all connections of the CRM; any success resets them.
    In half-open the first ``record`` decides (its caller holds the probe).
    """

    def __init__(
        self,
        redis: RedisClient,
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

    async def record(self, crm: str, outcomes: Sequence[bool]) -> str | None:
        """Outcomes (True ok, False failed); the state after them (None: none given)."""
        if not outcomes:
            return None
        return await self._run(crm, "record", "".join("1" if ok else "0" for ok in outcomes))

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
