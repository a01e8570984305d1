"""The CRMs' own limit models in the claim script, on a real Redis: a portal's day
hammered by several processes, a rolling budget learnt from answers, and the
in-flight cap shared by processes (tests/oracles/limiter.py is their model)."""

from __future__ import annotations

import asyncio
import json
import math
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable

from crmsync.crm.quota import Usage
from crmsync.crm_limits import CrmSpec
from crmsync.queue import keys
from crmsync.queue.store import Band, QueueStore
from crmsync.ratelimit import RateWindow
from crmsync.redis_client import RedisClient
from oracles.limiter import portal_days

# One process: claims (holding each claim ``hold`` seconds before its ack, as a
# send would), prints what was admitted and when its ack went out (Redis ms).
HAMMER = """
import asyncio, json, sys, time
from crmsync.crm_limits import CrmSpec
from crmsync.queue.store import QueueStore
from crmsync.ratelimit import RateWindow
from crmsync.redis_client import open_redis

async def main(url, cid, seconds, spec, hold):
    r = await open_redis(url, "standalone")
    store = QueueStore(r, margin=0.02)
    kind, alloc, cap, day_ms, zone = spec.split(",")
    crm = CrmSpec(kind, int(alloc), 100_000, int(cap), int(day_ms), zone)
    await store.configure(cid, [RateWindow(100_000, 10_000)], breaker_threshold=5,
                          breaker_recovery_ms=1000, paused=None, crm=crm)
    print("ready", flush=True)
    start_at = float(sys.stdin.readline())
    while time.time() < start_at:
        await asyncio.sleep(0.005)
    out = []
    while time.time() < start_at + seconds:
        c = await store.claim(cid, max_requests=5, batch_size=1, lease_ms=30000)
        if c.permits:
            await asyncio.sleep(hold)
            # Floored like Redis TIME's ms, and stamped before the ack is sent.
            out.append((c.redis_ms, c.permits, int(time.time() * 1000)))
            await store.ack(c, c.ids)
        else:
            await asyncio.sleep(0.005)
    await r.aclose()
    print(json.dumps(out))

url, cid, seconds, spec, hold = sys.argv[1:6]
asyncio.run(main(url, cid, float(seconds), spec, float(hold)))
"""


async def configure(store: QueueStore, cid: str, crm: CrmSpec) -> None:
    """A connection under ``crm`` with a 10-second window too wide to matter."""
    await store.configure(
        cid,
        [RateWindow(100_000, 10_000)],
        breaker_threshold=5,
        breaker_recovery_ms=1000,
        paused=None,
        crm=crm,
    )


async def hammer(
    redis_client: RedisClient, redis_url: str, spec: str, *, procs: int, seconds: float, hold: float
) -> list[tuple[int, int, int]]:
    cid = f"crm-{uuid.uuid4().hex[:8]}"
    store = QueueStore(redis_client)
    await store.enqueue([(cid, f"c-{i}", Band.UPDATE) for i in range(20_000)])
    ps = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            HAMMER,
            redis_url,
            cid,
            str(seconds),
            spec,
            str(hold),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        for _ in range(procs)
    ]
    for p in ps:
        assert p.stdout is not None
        assert (await p.stdout.readline()).strip() == b"ready"
    start = f"{time.time() + 0.3}\n".encode()
    outs = await asyncio.gather(*(p.communicate(start) for p in ps))
    got: list[tuple[int, int, int]] = []
    for out, _ in outs:
        got += [tuple(x) for x in json.loads(out.decode().strip().splitlines()[-1])]
    return got


async def test_no_portal_day_holds_more_than_its_limit_across_processes(
    redis_client: RedisClient, redis_url: str
) -> None:
    """Four processes claim against a 1-second portal day in a zone 5:30 from UTC:
    each day (from its midnight, used 50 ms late) admits the daily limit less the
    reserve, never more, and the next day starts afresh."""
    limit, day = 30, 1000
    got = await hammer(
        redis_client, redis_url, f"daily,{limit},0,{day},Asia/Kolkata", procs=4, seconds=3.5, hold=0
    )
    per_day: Counter[int] = Counter()
    for redis_ms, permits, _ in got:
        per_day[portal_days(redis_ms - 50, "Asia/Kolkata", day)[0]] += permits
    most = limit - math.ceil(limit * 0.02)
    assert per_day and max(per_day.values()) == most, per_day
    assert sum(1 for n in per_day.values() if n == most) >= 2, per_day


async def test_the_in_flight_cap_is_shared_by_processes(
    redis_client: RedisClient, redis_url: str
) -> None:
    """Two processes, each claim held 30 ms as if sending: at no moment are more
    than the cap's requests in flight (claimed and not yet acknowledged)."""
    cap = 3
    got = await hammer(
        redis_client,
        redis_url,
        f"daily,1000000,{cap},86400000,UTC",
        procs=2,
        seconds=2.0,
        hold=0.03,
    )
    assert got
    events = sorted([(t0, n) for t0, n, _ in got] + [(t1, -n) for _, n, t1 in got])
    busy = peak = 0
    for _, n in events:
        busy += n
        peak = max(peak, busy)
    assert peak <= cap
    assert peak == cap  # the cap is used, not just respected


async def test_a_rolling_budget_is_learnt_from_answers(redis_client: RedisClient) -> None:
    """Unknown: one request, then nothing until the CRM says; then what the CRM's
    used/max leaves, less what we sent since the answered request; a stale answer
    changes nothing, a later one (the day rolled) frees room."""
    store = QueueStore(redis_client, margin=0.0)
    cid = f"sf-{uuid.uuid4().hex[:8]}"
    crm = CrmSpec("rolling", 100, 100, 0)
    await configure(store, cid, crm)
    await store.enqueue([(cid, f"c-{i}", Band.UPDATE) for i in range(500)])

    async def claim() -> tuple[int, str | None, int]:
        c = await store.claim(cid, max_requests=64, batch_size=1, lease_ms=30_000)
        await store.ack(c, c.ids)
        return c.permits, c.refused, c.seq

    probe, _, seq = await claim()
    assert (probe, seq) == (1, 0)  # not learnt: one request to learn from
    permits, refused, seq = await claim()
    assert (permits, refused, seq) == (0, "budget", 1)
    # The probe's answer: 90 of 100 used (other apps' too).
    assert await store.learn(cid, Usage(90, 100), 1)
    assert (await claim())[:2] == (10, None)
    assert (await claim())[:2] == (0, "budget")
    assert not await store.learn(cid, Usage(0, 100), 0)  # an older answer: ignored
    assert (await claim())[:2] == (0, "budget")
    assert await store.learn(cid, Usage(40, 100), 11)  # the day rolled: 60 free
    assert (await claim())[:2] == (60, None)
    depth = await store.depth(cid)
    assert depth.state["bud_used"] == "40" and depth.state["bud_seq"] == "71"


async def test_an_answer_that_frees_the_budget_wakes_the_workers(
    redis_client: RedisClient, redis_clients: Callable[[], RedisClient]
) -> None:
    """On a real day a refused claim comes back in 5 minutes (the recheck): an
    answer that gives a spent (or unknown) budget room wakes every worker at once."""
    store = QueueStore(redis_client, margin=0.0)
    cid = f"sf-{uuid.uuid4().hex[:8]}"
    crm = CrmSpec("rolling", 100, 100, 0)  # no cap: its release wakes too
    await configure(store, cid, crm)
    await store.enqueue([(cid, f"c-{i}", Band.UPDATE) for i in range(50)])
    sub = redis_clients().pubsub()
    await sub.subscribe(keys.WAKE_CHANNEL)
    probe = await store.claim(cid, max_requests=8, batch_size=1, lease_ms=30_000)
    refused = await store.claim(cid, max_requests=8, batch_size=1, lease_ms=30_000)
    assert (probe.permits, refused.refused) == (1, "budget")
    assert refused.next_eligible_ms is not None
    assert refused.next_eligible_ms - refused.redis_ms >= 299_000

    async def woken() -> list[str]:
        got: list[str] = []
        while (m := await sub.get_message(ignore_subscribe_messages=True, timeout=0.5)) is not None:
            got += m["data"].decode().split(",")
        return got

    await woken()
    # The probe's answer: 99 of 100 used; reserve 0: room 1 -> it wakes.
    await store.finish(probe, ack=probe.ids, learnt=Usage(99, 100))
    assert cid in await woken()
    assert (await store.claim(cid, max_requests=8, batch_size=1, lease_ms=30_000)).permits == 1
    await sub.aclose()


async def test_a_request_outside_a_claim_is_held_by_the_budget_too(
    redis_client: RedisClient,
) -> None:
    """A permit taken outside a claim (onboarding's checks, a follow-up request):
    the probe of a budget not learnt yet, then the learnt room, never more."""
    store = QueueStore(redis_client, margin=0.0)
    cid = f"sf-{uuid.uuid4().hex[:8]}"
    await configure(store, cid, CrmSpec("rolling", 100, 100, 0))
    assert (await store.take(cid, 3))[0] == 1
    assert (await store.take(cid, 3))[0] == 0
    await store.learn(cid, Usage(98, 100))
    assert (await store.take(cid, 3))[0] == 2
    assert (await store.take(cid, 3))[0] == 0


async def test_a_portal_day_counted_again_after_a_redis_loss_probes_until_an_answer(
    redis_client: RedisClient,
) -> None:
    """A HubSpot day 95 % spent when Redis loses it: the heal counts the day from
    zero, so until an answer tells the day's use again one request at a time goes
    (not a window's worth on a count that forgot the day); the answer's remaining
    then holds, and a portal whose answers never tell stops probing after a bound."""
    store = QueueStore(redis_client, margin=0.0)
    cid = f"hs-{uuid.uuid4().hex[:8]}"
    crm = CrmSpec("daily", 100, 100_000, 0)
    await configure(store, cid, crm)
    await store.enqueue([(cid, f"c-{i}", Band.UPDATE) for i in range(500)])

    async def claim(most: int = 200) -> tuple[int, str | None, int]:
        c = await store.claim(cid, max_requests=most, batch_size=1, lease_ms=30_000)
        await store.ack(c, c.ids)
        return c.permits, c.refused, c.seq

    assert (await claim(95))[0] == 95  # 95 of the day's 100 sent
    # Redis loses everything; the heal (no windows to refill here) marks it again.
    await redis_client.flushdb()
    await configure(store, cid, crm)
    await store.enqueue([(cid, f"c-{i}", Band.UPDATE) for i in range(500)])
    await store.heal(cid, "healed-1", [])
    probe, refused, seq = await claim()
    assert (probe, refused) == (1, None)
    assert (await claim())[:2] == (0, "budget")  # no more until an answer
    # The probe's answer: 96 of the day's 100 used (ours before the loss too).
    await store.learn(cid, Usage(96, 100), seq)
    assert (await claim())[0] == 3  # 100 - 96 - the probe counted once more
    assert (await claim())[:2] == (0, "budget")
    # A portal whose answers carry no daily headers: the probing ends after a bound.
    cid2 = f"hs-{uuid.uuid4().hex[:8]}"
    await configure(store, cid2, crm)
    await store.enqueue([(cid2, f"c-{i}", Band.UPDATE) for i in range(50)])
    await store.heal(cid2, "healed-2", [])
    await redis_client.hset(keys.connection(cid2).state, "day_unknown", 0)
    c = await store.claim(cid2, max_requests=200, batch_size=1, lease_ms=30_000)
    assert c.permits == 50
