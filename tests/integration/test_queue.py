"""QueueStore on a real Redis, one server and a cluster: order, coalescing,
leases, retries, release, wake-ups."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable

import pytest

from crmsync.errors import UserError
from crmsync.queue import keys
from crmsync.queue.store import Band, Claim, QueueStore
from crmsync.queue.wake import WakeListener
from crmsync.ratelimit import RateWindow
from crmsync.redis_client import RedisClient

LEASE = 30_000
WIDE = [RateWindow(100_000, 1000)]  # limits out of the way of queue tests


@pytest.fixture
async def store(any_redis: RedisClient) -> QueueStore:
    return QueueStore(any_redis)


@pytest.fixture
async def cid(store: QueueStore) -> str:
    cid = f"q-{uuid.uuid4().hex[:8]}"
    await store.configure(cid, WIDE, breaker_threshold=5, breaker_recovery_ms=30_000, paused=None)
    return cid


async def claim(store: QueueStore, cid: str, n: int = 1, *, lease_ms: int = LEASE) -> Claim:
    return await store.claim(cid, max_requests=n, batch_size=1, lease_ms=lease_ms)


async def test_priority_order_under_a_backlog(store: QueueStore, cid: str) -> None:
    # Three waves, names chosen so that name order contradicts age order.
    waves = [
        ("z", [Band.DELETE, Band.UPDATE, Band.CREATE]),
        ("m", [Band.UPDATE]),
        ("a", [Band.CREATE, Band.DELETE]),
    ]
    for prefix, bands in waves:
        await store.enqueue([(cid, f"{prefix}{i}-{b.name}", b) for i in range(30) for b in bands])
        await asyncio.sleep(0.005)
    got = await claim(store, cid, 1000)
    assert len(got.ids) == 30 * 6
    assert got.bands == sorted(got.bands)
    by_band: dict[int, list[str]] = {}
    for i, b in zip(got.ids, got.bands, strict=True):
        by_band.setdefault(b, []).append(i[0])
    assert by_band[Band.CREATE] == ["z"] * 30 + ["a"] * 30
    assert by_band[Band.UPDATE] == ["z"] * 30 + ["m"] * 30
    assert by_band[Band.DELETE] == ["z"] * 30 + ["a"] * 30
    assert got.refused is None and got.permits == 180


async def test_coalescing_keeps_one_entry_with_the_best_band(
    store: QueueStore, cid: str, any_redis: RedisClient
) -> None:
    bands = [Band.DELETE, Band.UPDATE, Band.CREATE, Band.UPDATE] * 25
    for b in bands:  # 100 separate enqueues of one contact
        await store.enqueue([(cid, "c-1", b)])
    await store.enqueue([(cid, "c-2", Band.UPDATE), (cid, "c-2", Band.DELETE)])
    assert await any_redis.zcard(keys.connection(cid).ready) == 2
    got = await claim(store, cid, 10)
    assert list(zip(got.ids, got.bands, strict=True)) == [("c-1", 0), ("c-2", 1)]


async def test_enqueue_while_leased_waits_for_the_holder(store: QueueStore, cid: str) -> None:
    await store.enqueue([(cid, "c-1", Band.UPDATE)])
    first = await claim(store, cid)
    await store.enqueue([(cid, "c-1", Band.CREATE)])
    other = await claim(store, cid)
    assert other.ids == [] and other.refused == "empty"
    assert (await store.depth(cid)).requeue == 1
    await store.ack(first, first.ids)
    again = await claim(store, cid)
    assert (again.ids, again.bands) == (["c-1"], [Band.CREATE])


async def test_expired_lease_returns_its_work(store: QueueStore, cid: str) -> None:
    await store.enqueue([(cid, "c-1", Band.DELETE), (cid, "c-2", Band.DELETE)])
    lost = await claim(store, cid, 1, lease_ms=100)
    kept = await claim(store, cid, 1, lease_ms=LEASE)
    assert lost.ids == ["c-1"] and kept.ids == ["c-2"]
    assert (await claim(store, cid)).refused == "empty"
    await asyncio.sleep(0.15)
    back = await claim(store, cid)
    assert (back.ids, back.bands) == (["c-1"], [Band.DELETE])
    # The first holder's lease is gone: its ack must not finish the new lease.
    await store.ack(lost, lost.ids)
    depth = await store.depth(cid)
    assert depth.leased == 2 and depth.stats["leases_expired"] == 1


async def test_an_expired_lease_marks_its_ids_unknown_until_acknowledged(
    store: QueueStore, cid: str
) -> None:
    """Its worker may have died after the CRM applied the send: every claim that
    takes the id tells it, until one acknowledges it."""
    await store.enqueue([(cid, "c-1", Band.CREATE), (cid, "c-2", Band.CREATE)])
    first = await claim(store, cid, 2, lease_ms=100)
    assert first.ids == ["c-1", "c-2"] and first.unknown == frozenset()
    await store.ack(first, ["c-2"])
    await asyncio.sleep(0.15)
    again = await claim(store, cid, 2, lease_ms=100)
    assert (again.ids, again.bands, again.unknown) == (["c-1"], [Band.CREATE], frozenset({"c-1"}))
    await store.release(again, again.ids)  # not an outcome: still unknown
    third = await claim(store, cid, 2)
    assert third.unknown == {"c-1"}
    await store.ack(third, third.ids)
    await store.enqueue([(cid, "c-1", Band.UPDATE)])
    assert (await claim(store, cid)).unknown == frozenset()


async def test_renew_keeps_a_lease(store: QueueStore, cid: str) -> None:
    await store.enqueue([(cid, "c-1", Band.UPDATE)])
    held = await claim(store, cid, lease_ms=150)
    await asyncio.sleep(0.1)
    await store.renew(held, held.ids, 300)
    await asyncio.sleep(0.1)
    assert (await claim(store, cid)).refused == "empty"


async def test_delayed_retry_becomes_ready_when_due(store: QueueStore, cid: str) -> None:
    await store.enqueue([(cid, "c-1", Band.CREATE)])
    first = await claim(store, cid)
    await store.retry_later(first, {"c-1": 0.3})
    early = await claim(store, cid)
    assert early.refused == "empty" and early.ids == []
    assert early.next_eligible_ms is not None
    assert 200 <= early.next_eligible_ms - early.admitted_ms <= 300
    await store.enqueue([(cid, "c-1", Band.UPDATE)])  # stays delayed, no duplicate
    assert (await claim(store, cid)).refused == "empty"
    await asyncio.sleep(0.35)
    due = await claim(store, cid, 5)
    assert (due.ids, due.bands) == (["c-1"], [Band.CREATE])


async def test_release_puts_work_back_without_losing_the_band(store: QueueStore, cid: str) -> None:
    await store.enqueue([(cid, "old-delete", Band.DELETE)])
    await asyncio.sleep(0.005)
    held = await claim(store, cid)
    await store.enqueue([(cid, "new-delete", Band.DELETE), (cid, "update", Band.UPDATE)])
    await store.release(held, held.ids)
    got = await claim(store, cid, 10)
    assert got.ids == ["update", "old-delete", "new-delete"]
    assert got.bands == [Band.UPDATE, Band.DELETE, Band.DELETE]


async def test_refused_claims_say_when_to_come_back(store: QueueStore, cid: str) -> None:
    await store.enqueue([(cid, "c-1", Band.UPDATE)])
    await store.pause(cid, "token rejected")
    paused = await claim(store, cid)
    assert (paused.refused, paused.next_eligible_ms, paused.ids) == ("paused", None, [])
    assert (await store.depth(cid)).paused == "token rejected"
    await store.resume(cid)
    await store.block(cid, 0.5)
    blocked = await claim(store, cid)
    assert blocked.refused == "blocked" and blocked.next_eligible_ms is not None
    assert 400 <= blocked.next_eligible_ms - blocked.admitted_ms <= 500
    await store.block(cid, 0.1)  # a shorter block does not shorten the longer one
    assert (await claim(store, cid)).next_eligible_ms == blocked.next_eligible_ms
    await asyncio.sleep(0.55)
    assert (await claim(store, cid)).ids == ["c-1"]


async def wake_ids(wakes: WakeListener, known: set[str]) -> set[str]:
    """The ids of ``known`` in the next wake naming any (others skipped: a
    server's channels are shared by every test run on it)."""
    while True:
        ids = set((await asyncio.wait_for(wakes.__anext__(), timeout=5)).ids) & known
        if ids:
            return ids


async def test_wake_ups_name_connections_with_new_work(store: QueueStore, cid: str) -> None:
    other = f"q-{uuid.uuid4().hex[:8]}"
    both = {cid, other}
    async with store.wakeups.listen() as wakes:
        await asyncio.wait_for(wakes.subscribed(), timeout=5)
        await store.enqueue([(cid, "c-1", Band.UPDATE), (other, "c-1", Band.UPDATE)])
        got: set[str] = set()
        while got != both:  # on a cluster the two may come in two messages
            got |= await wake_ids(wakes, both)
        await store.enqueue([(cid, "c-1", Band.CREATE)])  # coalesced: no new work, no wake
        await store.resume(other)
        assert await wake_ids(wakes, both) == {other}


async def test_large_enqueue_is_chunked_and_quick(store: QueueStore, cid: str) -> None:
    other = f"q-{uuid.uuid4().hex[:8]}"
    items = [(c, f"id-{i}", i % 3) for i in range(6000) for c in (cid, other)]
    t0 = time.perf_counter()
    await store.enqueue(items)
    assert time.perf_counter() - t0 < 5.0
    assert (await store.depth(cid)).ready == 6000
    assert (await store.depth(other)).ready == 6000


async def test_refund_gives_unused_permits_back(store: QueueStore, cid: str) -> None:
    await store.configure(
        cid, [RateWindow(5, 60_000)], breaker_threshold=5, breaker_recovery_ms=1000, paused=None
    )
    await store.enqueue([(cid, f"c-{i}", Band.UPDATE) for i in range(20)])
    first = await claim(store, cid, 5)
    assert first.permits == 5
    limited = await claim(store, cid, 5)
    assert limited.refused == "rate_limited" and limited.next_eligible_ms is not None
    assert limited.next_eligible_ms > limited.admitted_ms + 59_000
    await store.ack(first, first.ids[:3], refund=2)
    second = await claim(store, cid, 5)
    assert second.permits == 2 and len(second.ids) == 2
    assert (await store.depth(cid)).in_window == {60_000: 5}


async def test_redis_losing_everything_does_not_break_claims(
    store: QueueStore, cid: str, any_redis: RedisClient
) -> None:
    await store.configure(
        cid, [RateWindow(3, 60_000)], breaker_threshold=5, breaker_recovery_ms=1000, paused=None
    )
    await any_redis.flushdb()
    await any_redis.script_flush()
    await store.enqueue([(cid, f"c-{i}", Band.UPDATE) for i in range(10)])
    got = await claim(store, cid, 10)
    assert got.permits == 3  # the limit came back from this process's config
    depth = await store.depth(cid)
    assert depth.windows == [RateWindow(3, 60_000)] and depth.ready == 7


async def test_a_hand_back_after_the_scripts_were_lost_still_lands(
    store: QueueStore, cid: str, any_redis: RedisClient
) -> None:
    """Scripts are not replicated: a promoted replica (or a restart) answers
    NOSCRIPT to every call of a pipelined hand-back; each runs once, in order."""
    await store.enqueue([(cid, f"c-{i}", Band.UPDATE) for i in range(4)])
    c = await claim(store, cid, 4)
    await any_redis.script_flush()
    await store.finish(
        c, ack=c.ids[:1], retry={c.ids[1]: 60}, release=c.ids[2:], counters={"created": 1}
    )
    depth = await store.depth(cid)
    assert (depth.ready, depth.leased, depth.delayed) == (2, 0, 1)
    assert depth.stats["acked"] == 1 and depth.stats["created"] == 1


async def test_unconfigured_connection_is_a_clear_error(store: QueueStore) -> None:
    with pytest.raises(UserError, match="no queue configuration"):
        await claim(store, "never-added")


async def test_configure_keeps_breaker_and_windows(store: QueueStore, cid: str) -> None:
    await store.configure(
        cid, [RateWindow(2, 60_000)], breaker_threshold=1, breaker_recovery_ms=60_000, paused=None
    )
    await store.enqueue([(cid, f"c-{i}", Band.UPDATE) for i in range(5)])
    c = await claim(store, cid, 5)
    await store.report(c, [False])
    await store.configure(
        cid, [RateWindow(2, 60_000)], breaker_threshold=1, breaker_recovery_ms=60_000, paused=None
    )
    depth = await store.depth(cid)
    assert depth.breaker == "open" and depth.in_window == {60_000: 2}


async def test_drop_deletes_every_key(store: QueueStore, cid: str, any_redis: RedisClient) -> None:
    await store.enqueue([(cid, f"c-{i}", Band.UPDATE) for i in range(5)])
    c = await claim(store, cid, 2)
    await store.retry_later(c, {c.ids[0]: 60})
    await store.drop(cid)
    left = [k async for k in any_redis.scan_iter(match=f"*{cid}*")]
    assert left == []


async def test_no_two_claimers_ever_hold_one_contact(
    store: QueueStore, cid: str, connect_redis: Callable[[], Awaitable[RedisClient]]
) -> None:
    other = QueueStore(await connect_redis())
    await store.enqueue([(cid, f"c-{i}", i % 3) for i in range(300)])
    claims = await asyncio.gather(*(claim(s, cid, 7) for _ in range(40) for s in (store, other)))
    ids = [i for c in claims for i in c.ids]
    assert len(ids) == len(set(ids)) == 300


async def test_finish_holds_the_connection_before_it_releases(store: QueueStore, cid: str) -> None:
    """A quota header's pause rides on the claim's hand-back, ahead of its release:
    the released ids must not be claimable before the pause ends."""
    await store.enqueue([(cid, "c-1", Band.UPDATE), (cid, "c-2", Band.UPDATE)])
    first = await claim(store, cid, 2)
    assert sorted(first.ids) == ["c-1", "c-2"]
    await store.finish(first, ack=["c-1"], release=["c-2"], block=0.3)
    held = await claim(store, cid)
    assert held.refused == "blocked" and held.ids == []
    assert held.next_eligible_ms is not None
    assert 200 <= held.next_eligible_ms - held.admitted_ms <= 300
    await asyncio.sleep(0.35)
    assert (await claim(store, cid)).ids == ["c-2"]
