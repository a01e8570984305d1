"""The worker loop: start a claim for every due connection that finds slots.

One process runs one event loop with up to ``concurrency`` CRM requests in
flight. The loop takes the connections whose next eligible time has come
(``Slots``), starts one claim each (``Claims``), then sleeps until the next one
is due, a slot is freed, or new work arrives. New work comes two ways: the
relay publishes the connections it queued for (``RedisWakes``), and the
registry reports connections added, changed or resumed. On stop, no new claim
starts; those in flight get the grace period, then give their ids back.

The loop owns nothing it builds: ``crmsync.processes.build_worker`` wires the
real collaborators, the unit tests in-memory ones.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterable
from typing import Protocol

import structlog

from crmsync.clock import Clock
from crmsync.queue.wake import Wakeups
from crmsync.redis_client import REDIS_ERRORS
from crmsync.worker.claim import Claims
from crmsync.worker.heal import Healer
from crmsync.worker.ports import Connections
from crmsync.worker.slots import Slots

log = structlog.get_logger(__name__)


class Wakes(Protocol):
    async def listen(
        self, stop: asyncio.Event, on_wake: Callable[[Iterable[str] | None], None]
    ) -> None:
        """Call ``on_wake(ids)`` for every wake-up, and ``on_wake(None)`` (every
        connection) whenever one may have been missed."""
        ...


class Worker:
    """One process's sync loop."""

    def __init__(
        self,
        *,
        clock: Clock,
        slots: Slots,
        registry: Connections,
        claims: Claims,
        wakes: Wakes,
        shutdown_grace_seconds: float,
        healer: Healer | None = None,
    ) -> None:
        self.healer = healer
        self.clock = clock
        self.slots = slots
        self.registry = registry
        self.claims = claims
        self.wakes = wakes
        self.shutdown_grace_seconds = shutdown_grace_seconds

    async def run(self, stop: asyncio.Event) -> None:
        touched = await self.registry.refresh()
        self.slots.add(touched, self.clock.now_ms())
        if self.healer is not None:
            await self.healer.load()
        helpers = [
            asyncio.create_task(self.registry.watch(stop, self.on_connections_changed)),
            asyncio.create_task(self.wakes.listen(stop, self.on_wake)),
        ]
        if self.healer is not None:
            served = lambda: self.registry.connections.values()  # noqa: E731
            helpers.append(asyncio.create_task(self.healer.watch(stop, served, self.on_wake)))
        try:
            await self._loop(stop)
        finally:
            await self.claims.drain(self.shutdown_grace_seconds)
            for h in helpers:
                h.cancel()
            for h in helpers:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await h

    async def _loop(self, stop: asyncio.Event) -> None:
        kick = self.slots.kick
        while not stop.is_set():
            connections, adapters = self.registry.connections, self.registry.adapters
            for cid, want in self.slots.take_due(self.clock.now_ms(), connections):
                self.claims.start(connections[cid], adapters[cid], want)
            timeout = self.slots.wait_seconds(self.clock.now_ms())
            kick.clear()
            stop_wait = asyncio.ensure_future(stop.wait())
            kick_wait = asyncio.ensure_future(kick.wait())
            await asyncio.wait(
                {stop_wait, kick_wait}, timeout=timeout, return_when="FIRST_COMPLETED"
            )
            stop_wait.cancel()
            kick_wait.cancel()

    def on_connections_changed(self, connection_ids: set[str]) -> None:
        known = self.registry.connections
        self.slots.add([c for c in connection_ids if c in known], self.clock.now_ms())

    def on_wake(self, connection_ids: Iterable[str] | None) -> None:
        if connection_ids is None:
            connection_ids = list(self.registry.connections)
        self.slots.wake(connection_ids, self.clock.now_ms())


class RedisWakes:
    """The relay's wake-ups (``queue.wake.Wakeups``: pub/sub standalone, sharded
    pub/sub on a cluster). Whenever the listener (re)subscribed, a message may
    have been missed: every connection is woken then."""

    def __init__(self, wakeups: Wakeups) -> None:
        self.wakeups = wakeups

    async def listen(
        self, stop: asyncio.Event, on_wake: Callable[[Iterable[str] | None], None]
    ) -> None:
        while not stop.is_set():
            try:
                async with self.wakeups.listen() as wakes:
                    async for wake in wakes:
                        on_wake(None if wake.everything else wake.ids)
            except REDIS_ERRORS as exc:
                log.warning("worker.wake_listener_error", error=str(exc))
                await asyncio.sleep(1.0)
