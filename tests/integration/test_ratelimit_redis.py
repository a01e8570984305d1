"""The distributed limiter on a real Redis (one server and a cluster), hammered by
several processes."""

from __future__ import annotations

import asyncio
import bisect
import json
import sys
import time
import uuid

import pytest

from crmsync.queue import keys
from crmsync.queue import store as store_module
from crmsync.queue.store import Band, QueueStore
from crmsync.ratelimit import RateWindow
from crmsync.redis_client import RedisClient
from crmsync.settings import RedisMode

# One hammering process: claims whenever Redis says the connection may send
# (at once while permits remain, else at the named time, as workers do), acks
# at once and prints what was admitted. A fresh interpreter per process, so
# the processes truly compete.
HAMMER = """
import asyncio, json, random, sys, time
from crmsync.queue.store import QueueStore
from crmsync.redis_client import open_redis

async def main(url, mode, cid, seconds, seed):
    rnd = random.Random(seed)
    r = await open_redis(url, mode)
    store = QueueStore(r, margin=0.02)
    print("ready", flush=True)
    start_at = float(sys.stdin.readline())
    admitted = []
    while time.time() < start_at:
        await asyncio.sleep(0.005)
    while time.time() < start_at + seconds:
        c = await store.claim(cid, max_requests=rnd.randint(1, 5), batch_size=1, lease_ms=30000,
                              backdate_ms=seed % 2 * 10)
        if c.permits:
            admitted.append((c.admitted_ms, c.permits, c.redis_ms))
            await store.ack(c, c.ids)
        wait = (c.next_eligible_ms or 0) / 1000 - time.time()
        if wait > 0:
            await asyncio.sleep(min(wait, 0.5))
    await r.aclose()
    print(json.dumps(admitted))

url, mode, cid, seconds, seed = sys.argv[1:6]
asyncio.run(main(url, mode, cid, float(seconds), int(seed)))
"""


def max_in_any_window(times: list[int], window_ms: int) -> int:
    """Most admissions in any half-open window [t, t + window_ms)."""
    times = sorted(times)
    return max(
        (bisect.bisect_left(times, t + window_ms) - i for i, t in enumerate(times)), default=0
    )


async def queued(
    redis: RedisClient, windows: list[RateWindow], n: int, band: int = Band.UPDATE
) -> tuple[QueueStore, str]:
    """A fresh connection (margin 0) with these windows and ``n`` ids ready."""
    store = QueueStore(redis, margin=0.0)
    cid = f"rl-{uuid.uuid4().hex[:8]}"
    await store.configure(cid, windows, breaker_threshold=5, breaker_recovery_ms=1000, paused=None)
    await store.enqueue([(cid, f"c-{i}", band) for i in range(n)])
    return store, cid


async def test_eight_processes_never_exceed_100_per_second(
    any_redis: RedisClient, any_redis_url: str, redis_mode: RedisMode
) -> None:
    store = QueueStore(any_redis, margin=0.02)
    cid = f"rl-{uuid.uuid4().hex[:8]}"
    await store.configure(
        cid, [RateWindow(100, 1000)], breaker_threshold=5, breaker_recovery_ms=30_000, paused=None
    )
    await store.enqueue([(cid, f"c-{i}", Band.UPDATE) for i in range(5000)])
    seconds = 10.0
    run_for = seconds + 0.5
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            HAMMER,
            any_redis_url,
            redis_mode,
            cid,
            str(run_for),
            str(seed),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        for seed in range(8)
    ]
    for p in procs:  # start together once every interpreter is up
        assert p.stdout is not None
        assert await asyncio.wait_for(p.stdout.readline(), timeout=60) == b"ready\n"
    go = f"{time.time() + 0.2}\n".encode()
    for p in procs:
        assert p.stdin is not None
        p.stdin.write(go)
        await p.stdin.drain()
        p.stdin.close()
    results = [await asyncio.wait_for(p.communicate(), timeout=60) for p in procs]
    errors = [e.decode()[-2000:] for p, (_, e) in zip(procs, results, strict=True) if p.returncode]
    assert not errors, errors
    outputs = [out.decode() for out, _ in results]
    times: list[int] = []
    claimed: list[int] = []  # when each was claimed: the sends, for a CRM
    for out in outputs:
        for admitted_ms, permits, redis_ms in json.loads(out):
            times += [admitted_ms] * permits
            claimed += [redis_ms] * permits
    busiest = max_in_any_window(times, 1000)
    assert busiest <= 100, f"{busiest} admitted within one second"
    # Half the processes stamp late claims up to 10 ms back: the claims
    # themselves still keep the limit (10 ms is within the 2% margin's 20 ms).
    assert max_in_any_window(claimed, 1000) <= 100
    assert int((await any_redis.hgetall(keys.connection(cid).stats))[b"backdated"]) > 0
    # Use of the limit: admissions within 10 s of the first one.
    times.sort()
    used = bisect.bisect_left(times, times[0] + int(seconds * 1000))
    assert used >= 950, f"only {used} admitted in {seconds} s"
    assert sum(1 for out in outputs if json.loads(out)) >= 4  # every process competed
    depth = await store.depth(cid)
    assert depth.ready == 5000 - len(times) and depth.leased == 0


async def test_several_windows_are_checked_together(any_redis: RedisClient) -> None:
    windows = [RateWindow(4, 200), RateWindow(6, 60_000)]
    store, cid = await queued(any_redis, windows, 50, Band.CREATE)
    times: list[int] = []
    deadline = time.monotonic() + 1.5
    while time.monotonic() < deadline:
        c = await store.claim(cid, max_requests=3, batch_size=1, lease_ms=30_000)
        times += [c.admitted_ms] * c.permits
        if c.permits:
            await store.ack(c, c.ids)
        elif c.next_eligible_ms is not None:
            # Never asked back before the named time, and asked back at all.
            assert c.next_eligible_ms > c.admitted_ms
            await asyncio.sleep(min(0.05, (c.next_eligible_ms - c.admitted_ms) / 1000))
    assert len(times) == 6
    assert max_in_any_window(times, 200) <= 4
    last = await store.claim(cid, max_requests=3, batch_size=1, lease_ms=30_000)
    assert last.refused == "rate_limited"
    assert last.next_eligible_ms is not None and last.next_eligible_ms >= min(times) + 60_000


async def test_batches_take_one_permit_per_request(any_redis: RedisClient) -> None:
    store, cid = await queued(any_redis, [RateWindow(3, 60_000)], 250)
    c = await store.claim(cid, max_requests=10, batch_size=100, lease_ms=30_000)
    assert (c.permits, len(c.ids)) == (3, 250)
    assert c.next_eligible_ms is None or c.next_eligible_ms >= c.admitted_ms
    nothing = await store.claim(cid, max_requests=1, batch_size=100, lease_ms=30_000)
    assert nothing.refused == "empty"


async def test_restamp_moves_permits_to_the_write_time(any_redis: RedisClient) -> None:
    """A request written 250 ms after its admission is counted from its write:
    once the admission leaves the window the limiter still refuses, until the
    write leaves it; the move neither adds nor loses permits."""
    store, cid = await queued(any_redis, [RateWindow(5, 500)], 20)
    first = await store.claim(cid, max_requests=5, batch_size=1, lease_ms=30_000)
    assert first.permits == 5
    await store.ack(first, first.ids)
    await asyncio.sleep(0.25)
    written = await store.restamp(cid, first.admitted_ms, 5)
    assert written >= first.admitted_ms + 250
    # The admission has left the window; the writes have not.
    await asyncio.sleep(max(0.0, (first.admitted_ms + 560) / 1000 - time.time()))
    held = await store.claim(cid, max_requests=5, batch_size=1, lease_ms=30_000)
    assert held.refused == "rate_limited" and held.permits == 0
    assert held.next_eligible_ms is not None and held.next_eligible_ms >= written + 490
    # After the writes leave it the full limit is back, not more.
    await asyncio.sleep(max(0.0, (held.next_eligible_ms + 20) / 1000 - time.time()))
    again = await store.claim(cid, max_requests=10, batch_size=1, lease_ms=30_000)
    assert again.permits == 5


async def test_a_late_claim_is_stamped_when_its_room_opened(
    any_redis: RedisClient,
) -> None:
    """A claim that comes after its room opened is stamped at that moment, never
    more than ``backdate_ms`` before Redis time; the next room follows from that
    stamp, and a span never holds more than the limit."""
    store, cid = await queued(any_redis, [RateWindow(8, 500)], 40)  # too few to pace
    first = await store.claim(cid, max_requests=8, batch_size=1, lease_ms=30_000)
    assert first.permits == 8 and first.admitted_ms == first.redis_ms
    stamps = [first.admitted_ms] * 8
    for late_ms in (4, 25):
        due = first.next_eligible_ms
        assert due is not None
        await asyncio.sleep(max(0.0, (due + late_ms) / 1000 - time.time()))
        c = await store.claim(cid, max_requests=8, batch_size=1, lease_ms=30_000, backdate_ms=10)
        assert c.permits == 8, c
        assert c.admitted_ms == max(due, c.redis_ms - 10), (due, c)
        stamps += [c.admitted_ms] * 8
        first = c
    assert max_in_any_window(stamps, 500) <= 8
    stats = await any_redis.hgetall(keys.connection(cid).stats)
    assert int(stats.get(b"backdated", 0)) >= 1


async def test_take_counts_follow_up_requests(any_redis: RedisClient) -> None:
    store, cid = await queued(any_redis, [RateWindow(3, 60_000)], 5)
    c = await store.claim(cid, max_requests=2, batch_size=1, lease_ms=30_000)
    assert c.permits == 2
    assert (await store.take(cid, 2))[0] == 1  # one left in the window
    assert (await store.take(cid, 1))[0] == 0
    nothing = await store.claim(cid, max_requests=1, batch_size=1, lease_ms=30_000)
    assert nothing.refused == "rate_limited"


async def test_retake_moves_a_held_request_to_now_only_with_room(
    any_redis: RedisClient,
) -> None:
    """A request held back after its claim gives its old permit back and needs
    room at the time it goes out (unlike a late write's restamp, which needs none)."""
    store, cid = await queued(any_redis, [RateWindow(3, 300)], 8)
    c = await store.claim(cid, max_requests=3, batch_size=1, lease_ms=30_000)
    assert c.permits == 3
    granted, at = await store.retake(cid, c.admitted_ms)
    assert granted == 1 and at >= c.admitted_ms  # its own permit made the room
    assert (await store.take(cid, 1))[0] == 0  # still 3 in the window, not 4
    # Held past the window: its old permit has left it and frees nothing, and
    # the window is full again, so the held request must wait.
    await asyncio.sleep(0.4)
    full = await store.claim(cid, max_requests=3, batch_size=1, lease_ms=30_000)
    assert full.permits == 3
    assert (await store.retake(cid, c.admitted_ms))[0] == 0


async def test_a_crm_429_lowers_the_rate_for_a_while(
    any_redis: RedisClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a 429 every limit is halved, then grows back linearly to the whole."""
    monkeypatch.setattr(store_module, "SLOW_SECONDS", 2.0)
    store, cid = await queued(any_redis, [RateWindow(8, 1000)], 60)
    await store.block(cid, 0.0, slow=True)
    t0 = time.time()
    first = await store.claim(cid, max_requests=8, batch_size=1, lease_ms=30_000)
    assert first.permits == 4  # half of 8
    # The window is empty again; about 0.78 of the limit is back: 6 of 8.
    await asyncio.sleep(max(0.0, t0 + 1.1 - time.time()))
    mid = await store.claim(cid, max_requests=8, batch_size=1, lease_ms=30_000)
    assert 5 <= mid.permits <= 7
    # Slow-down over and the window empty: the whole limit.
    await asyncio.sleep(max(0.0, t0 + 3.2 - time.time()))
    end = await store.claim(cid, max_requests=8, batch_size=1, lease_ms=30_000)
    assert end.permits == 8
    # A quota header's block (no 429) does not slow down.
    await asyncio.sleep(1.05)
    await store.block(cid, 0.0)
    again = await store.claim(cid, max_requests=8, batch_size=1, lease_ms=30_000)
    assert again.permits == 8


async def test_permits_outside_a_claim_need_the_lineage_a_claim_needs(
    any_redis: RedisClient,
) -> None:
    """Without its lineage marker a connection's windows were lost (a flush): a
    follow-up take, a retake or a re-admission grants nothing until the heal, as a
    claim would be refused; with the marker, or unchecked (''), they are granted."""
    store, cid = await queued(any_redis, [RateWindow(1000, 1000)], 5)
    c = await store.claim(cid, max_requests=1, batch_size=1, lease_ms=30_000)
    assert (await store.take(cid, 1, "*"))[0] == 0  # no marker at all
    assert (await store.retake(cid, c.admitted_ms, 1, "*"))[0] == 0
    assert (await store.readmit(c, 1, "*")).permits == 0
    assert (await store.take(cid, 1, ""))[0] == 1  # unchecked
    await any_redis.hset(keys.connection(cid).state, "lineage", "run-1")
    assert (await store.take(cid, 1, "*"))[0] == 1
    assert (await store.take(cid, 1, "run-1"))[0] == 1
    assert (await store.take(cid, 1, "run-2"))[0] == 0  # healed by another lineage
