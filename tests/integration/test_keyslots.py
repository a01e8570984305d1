"""Every script call touches keys of one Redis Cluster hash slot.

Two views: the KEYS lists crmsync passes (recorded by wrapping the script
runner), and what the scripts really touch (recorded with MONITOR).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.crc import key_slot

from crmsync.breaker import CrmBreaker
from crmsync.queue import scripts
from crmsync.queue.store import Band, QueueStore
from crmsync.ratelimit import RateWindow
from support import RedisMonitor, script_keys


def slot(key: str) -> int:
    return key_slot(key.encode())


async def lifecycle(redis: aioredis.Redis, step: Callable[[], Awaitable[None]]) -> None:
    """Every script, on two connections and two CRMs; ``step`` runs after each call."""
    store = QueueStore(redis)
    breaker = CrmBreaker(redis, threshold=1, recovery_ms=1, probe_ms=1000)
    a, b = f"ks-{uuid.uuid4().hex[:6]}", f"ks-{uuid.uuid4().hex[:6]}"
    for cid in (a, b):
        await store.configure(
            cid,
            [RateWindow(100, 1000), RateWindow(1000, 10_000), RateWindow(10**6, 86_400_000)],
            breaker_threshold=1,
            breaker_recovery_ms=1,
            paused=None,
        )
    await store.enqueue([(c, f"x{i}", i % 3) for i in range(20) for c in (a, b)])
    await step()
    for cid in (a, b):
        c = await store.claim(cid, max_requests=5, batch_size=2, lease_ms=30_000)
        await step()
        await store.enqueue([(cid, c.ids[0], Band.CREATE)])  # leased: requeue
        await step()
        await store.renew(c, c.ids, 30_000)
        await step()
        c = await store.readmit(c, 2)
        await step()
        await store.restamp(cid, c.admitted_ms, 1)
        await step()
        await store.ack(c, c.ids[:2], refund=1)
        await step()
        await store.retry_later(c, {c.ids[2]: 0.0})
        await step()
        await store.release(c, c.ids[3:])
        await step()
        await store.report(c, [False])
        await step()
        await asyncio.sleep(0.01)
        probe = await store.claim(cid, max_requests=5, batch_size=2, lease_ms=30_000)
        assert probe.probe
        await step()
        await store.report(probe, [True])
        await step()
        await store.block(cid, 0.001)
        await step()
    for crm in ("salesforce", "hubspot"):
        await breaker.allow(crm)
        await step()
        await breaker.record(crm, [False])
        await step()


async def test_keys_passed_to_each_script_share_one_slot(
    redis_client: aioredis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[tuple[str, list[str]]] = []
    call, call_many = scripts.Scripts.call, scripts.Scripts.call_many
    call_mixed = scripts.Scripts.call_mixed

    async def spy_call(self: scripts.Scripts, name: str, keys: Sequence[str], args: Any) -> Any:
        seen.append((name, list(keys)))
        return await call(self, name, keys, args)

    async def spy_many(self: scripts.Scripts, name: str, calls: Sequence[scripts.Call]) -> Any:
        seen.extend((name, list(k)) for k, _ in calls)
        return await call_many(self, name, calls)

    async def spy_mixed(
        self: scripts.Scripts,
        calls: Sequence[tuple[str, Sequence[str], Sequence[scripts.Arg]]],
        *,
        extra: Sequence[tuple[scripts.Arg, ...]] = (),
    ) -> Any:
        seen.extend((name, list(k)) for name, k, _ in calls)
        return await call_mixed(self, calls, extra=extra)

    monkeypatch.setattr(scripts.Scripts, "call", spy_call)
    monkeypatch.setattr(scripts.Scripts, "call_many", spy_many)
    monkeypatch.setattr(scripts.Scripts, "call_mixed", spy_mixed)

    async def nothing() -> None:
        return None

    await lifecycle(redis_client, nothing)
    assert {name for name, _ in seen} == set(scripts.NAMES)
    for name, keys in seen:
        assert keys, name
        assert len({slot(k) for k in keys}) == 1, (name, keys)
    # Different connections and CRMs spread over slots (hash tags are per connection).
    assert len({slot(keys[0]) for _, keys in seen}) == 4


async def test_keys_scripts_touch_share_one_slot(
    redis_client: aioredis.Redis, redis_monitor: RedisMonitor
) -> None:
    """MONITOR shows the commands run inside scripts; between two markers sent
    after each call, all of them must hit the slot of that call's keys."""
    marker = f"keyslot-marker-{uuid.uuid4().hex}"
    markers_sent = 0

    async def step() -> None:
        nonlocal markers_sent
        await redis_client.echo(marker)
        markers_sent += 1

    await lifecycle(redis_client, step)
    await redis_monitor.wait_for(lambda: redis_monitor.count(marker) == markers_sent)
    segments: list[list[dict[str, Any]]] = [[]]
    for cmd in redis_monitor.commands:
        if marker in cmd["command"]:
            segments.append([])
        else:
            segments[-1].append(cmd)
    assert len(segments) == markers_sent + 1
    checked = 0
    for seg in segments[:-1]:
        allowed = {slot(k) for c in seg for k in script_keys(c["command"]) or ()}
        for c in seg:
            if c["client_type"] != "lua":
                continue
            parts = c["command"].split(" ")
            if parts[0].upper() in {"TIME", "PUBLISH"}:
                continue
            assert slot(parts[1]) in allowed, c["command"]
            checked += 1
    assert checked > 100
