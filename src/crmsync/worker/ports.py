"""What the worker needs of Redis and PostgreSQL, as small protocols.

``crmsync.queue.store.QueueStore`` (Redis) implements ``Store``,
``crmsync.worker.ledger.PgLedger`` (PostgreSQL) implements ``Ledger``,
``crmsync.breaker.CrmBreaker`` implements ``Breaker`` and
``crmsync.worker.registry.Registry`` implements ``Connections``; the unit tests'
in-memory fakes (``tests/fakes.py``) implement them too, so the real worker
code runs in milliseconds without servers. A store call that fails raises
``RedisError`` or ``OSError``; a ledger call that fails raises
``LedgerUnavailable``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from typing import Literal, Protocol

from crmsync.breaker import BreakerConfig, BreakerState
from crmsync.connections import Connection
from crmsync.crm.base import CrmAdapter
from crmsync.crm.quota import Usage
from crmsync.model import Claimed, DeadLetter, LedgerWrite
from crmsync.queue.store import Claim


class LedgerUnavailable(Exception):
    """PostgreSQL did not answer or refused a statement: nothing was written."""


class Store(Protocol):
    """The per-connection queue, limiter and breaker (``QueueStore``)."""

    async def claim(
        self,
        connection_id: str,
        *,
        max_requests: int,
        batch_size: int,
        lease_ms: int,
        backdate_ms: int = 0,
        lineage: str = "",
    ) -> Claim: ...

    async def readmit(self, claim: Claim, wanted: int) -> Claim: ...

    async def take(self, connection_id: str, wanted: int = 1) -> tuple[int, int]: ...

    async def retake(self, connection_id: str, admitted_ms: int, n: int = 1) -> tuple[int, int]: ...

    async def restamp(self, connection_id: str, admitted_ms: int, n: int = 1) -> int: ...

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
        """The hand-back; the connection's breaker state after its report."""
        ...

    async def learn(self, connection_id: str, usage: Usage, ref: int | None = None) -> bool:
        """What the CRM said of its daily budget outside a claim (``/limits``)."""
        ...

    async def release(self, claim: Claim, ids: Sequence[str]) -> None: ...

    async def renew(self, claim: Claim, ids: Sequence[str], lease_ms: int) -> None: ...

    async def block(
        self, connection_id: str, seconds: float, *, slow: bool = False, reason: str = ""
    ) -> None: ...

    async def pause(self, connection_id: str, reason: str) -> None: ...


class Ledger(Protocol):
    """The contacts and the sync ledger (PostgreSQL)."""

    async def load(self, connection_id: str, tenant: str, ids: Sequence[str]) -> list[Claimed]:
        """Each id's current contact (None when gone or another tenant's) and ledger row."""
        ...

    async def record(
        self, connection_id: str, rows: Sequence[LedgerWrite], dead: Sequence[DeadLetter]
    ) -> None:
        """Ledger rows and dead letters, together or not at all."""
        ...

    async def pause(self, connection_id: str, reason: str, rev: str | None = None) -> bool:
        """Pause the connection where it survives a Redis loss (and tell the workers),
        unless it is paused already or (``rev`` given) its credentials were replaced
        since the worker loaded them; True when this call paused it."""
        ...


class Breaker(Protocol):
    """The CRM-wide circuit breaker (``CrmBreaker``)."""

    cfg: BreakerConfig

    async def allow(self, crm: str) -> bool | Literal["probe"]: ...

    async def record(self, crm: str, outcomes: Sequence[bool]) -> str | None:
        """The breaker's state after these outcomes."""
        ...

    async def state(self, crm: str) -> BreakerState: ...


class Connections(Protocol):
    """The connections a worker serves, each with its adapter (``Registry``):
    every id in ``connections`` has its adapter in ``adapters``."""

    connections: dict[str, Connection]
    adapters: dict[str, CrmAdapter]

    async def refresh(self) -> set[str]:
        """Reload; the ids that are new, changed or resumed."""
        ...

    async def watch(self, stop: asyncio.Event, on_change: Callable[[set[str]], None]) -> None:
        """Until ``stop``: ``on_change(ids)`` whenever connections change."""
        ...
