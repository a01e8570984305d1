"""Breakers in Redis (one server and a cluster): the Lua breaker follows the
oracle's table; trips shared by every worker; one probe."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable

import pytest

from crmsync.breaker import CrmBreaker
from crmsync.queue.store import Band, Claim, QueueStore
from crmsync.ratelimit import RateWindow
from crmsync.redis_client import RedisClient
from oracles.breaker import CASES, BreakerConfig


@pytest.mark.parametrize(("name", "cfg", "steps"), CASES, ids=[c[0] for c in CASES])
async def test_lua_breaker_follows_the_same_table(
    any_redis: RedisClient, name: str, cfg: BreakerConfig, steps: list[tuple[str, int, str]]
) -> None:
    crm = f"crm-{uuid.uuid4().hex[:8]}"
    breaker = CrmBreaker(
        any_redis, threshold=cfg.threshold, recovery_ms=cfg.recovery_ms, probe_ms=cfg.probe_ms
    )
    base = 1_700_000_000_000
    seen = []
    for event, now, _ in steps:
        if event == "allow":
            seen.append(await breaker._run(crm, "allow", "", now_ms=base + now))
        else:
            flag = "1" if event == "success" else "0"
            seen.append(await breaker._run(crm, "record", flag, now_ms=base + now))
    assert seen == [expected for _, _, expected in steps]


async def test_crm_breaker_lets_exactly_one_probe_through(
    connect_redis: Callable[[], Awaitable[RedisClient]],
) -> None:
    clients = [await connect_redis() for _ in range(4)]
    breakers = [CrmBreaker(c, threshold=5, recovery_ms=200, probe_ms=5_000) for c in clients]
    crm = f"crm-{uuid.uuid4().hex[:8]}"
    for i in range(5):
        assert await breakers[i % 4].allow(crm) is True
        await breakers[i % 4].record(crm, [False])
    assert await breakers[0].allow(crm) is False
    await asyncio.sleep(0.25)
    answers = await asyncio.gather(*(b.allow(crm) for b in breakers for _ in range(25)))
    assert answers.count("probe") == 1 and answers.count(False) == 99
    await breakers[3].record(crm, [True])
    assert (await breakers[1].state(crm)).state == "closed"
    assert await breakers[2].allow(crm) is True


@pytest.fixture
async def stores(connect_redis: Callable[[], Awaitable[RedisClient]]) -> list[QueueStore]:
    """Four workers' views of one Redis."""
    return [QueueStore(await connect_redis()) for _ in range(4)]


async def _connection(store: QueueStore, recovery_ms: int) -> str:
    cid = f"b-{uuid.uuid4().hex[:8]}"
    await store.configure(
        cid,
        [RateWindow(10_000, 1000)],
        breaker_threshold=5,
        breaker_recovery_ms=recovery_ms,
        paused=None,
    )
    await store.enqueue([(cid, f"c-{i}", Band.UPDATE) for i in range(200)])
    return cid


async def _claim(store: QueueStore, cid: str) -> Claim:
    return await store.claim(cid, max_requests=1, batch_size=1, lease_ms=5_000)


async def test_connection_breaker_opens_cluster_wide_after_five_failures(
    stores: list[QueueStore],
) -> None:
    cid = await _connection(stores[0], 60_000)
    claims = [await _claim(stores[i % 4], cid) for i in range(6)]
    await stores[0].report(claims[0], [False, False])
    await stores[1].report(claims[1], [True])  # a success resets the count
    for i in range(2, 6):
        await stores[i % 4].report(claims[i], [False])
    assert (await stores[0].depth(cid)).breaker == "closed"
    extra = await _claim(stores[2], cid)
    await stores[3].report(extra, [False])
    for s in stores:
        refused = await _claim(s, cid)
        assert refused.refused == "circuit_open" and refused.ids == []
        opened = (await s.depth(cid)).breaker_opened_ms
        assert opened is not None and refused.next_eligible_ms == opened + 60_000
    depth = await stores[0].depth(cid)
    assert depth.breaker == "open" and depth.stats["breaker_trips"] == 1


async def _trip(stores: list[QueueStore], cid: str) -> None:
    for i in range(5):
        c = await _claim(stores[i % 4], cid)
        await stores[i % 4].report(c, [False])


async def test_half_open_lets_exactly_one_probe_through(stores: list[QueueStore]) -> None:
    cid = await _connection(stores[0], 200)
    await _trip(stores, cid)
    await asyncio.sleep(0.25)
    claims = await asyncio.gather(*(_claim(s, cid) for s in stores for _ in range(25)))
    probes = [c for c in claims if c.ids]
    assert len(probes) == 1 and probes[0].probe and len(probes[0].ids) == 1
    assert {c.refused for c in claims if not c.ids} == {"circuit_open"}
    probe = probes[0]
    # A straggler from before the trip reports success: it must not close the circuit.
    straggler = next(c for c in claims if not c.ids)
    await stores[1].report(straggler, [True])
    assert (await stores[0].depth(cid)).breaker == "half_open"
    await stores[2].report(probe, [True])
    assert (await stores[0].depth(cid)).breaker == "closed"
    assert (await _claim(stores[3], cid)).ids != []


async def test_failed_probe_reopens(stores: list[QueueStore]) -> None:
    cid = await _connection(stores[0], 200)
    await _trip(stores, cid)
    await asyncio.sleep(0.25)
    probe = await _claim(stores[1], cid)
    assert probe.probe
    await stores[1].report(probe, [False])
    refused = await _claim(stores[2], cid)
    assert refused.refused == "circuit_open"
    assert (
        refused.next_eligible_ms is not None
        and refused.next_eligible_ms > refused.admitted_ms + 100
    )
    await asyncio.sleep(0.25)
    assert (await _claim(stores[3], cid)).probe


async def test_a_probe_that_never_reports_is_replaced(stores: list[QueueStore]) -> None:
    cid = await _connection(stores[0], 100)
    await _trip(stores, cid)
    await asyncio.sleep(0.15)
    lost = await stores[0].claim(cid, max_requests=1, batch_size=1, lease_ms=150)
    assert lost.probe
    waiting = await _claim(stores[1], cid)
    assert waiting.refused == "circuit_open" and waiting.next_eligible_ms == lost.admitted_ms + 150
    await asyncio.sleep(0.2)
    assert (await _claim(stores[2], cid)).probe
