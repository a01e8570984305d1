"""The adaptive in-flight limit (Vegas-like) and the gate that holds sends to it."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crmsync.ratelimit import RateWindow
from crmsync.worker.inflight import LOG_EVERY_MS, MIN_SAMPLES, AdaptiveLimit, Gate, InFlight, bounds


def feed(lim: AdaptiveLimit, rtts: list[float], *, full: bool, start_ms: float = 0.0) -> None:
    """Answers one after another, 1 ms apart; ``full``: every slot was in use."""
    t = start_ms
    for rtt in rtts:
        if full:
            lim.saturated()
        lim.sample(rtt, t)
        t += 1.0


def test_answers_as_fast_as_unloaded_let_a_busy_limit_grow() -> None:
    lim = AdaptiveLimit(floor=4, ceiling=200, limit=10)
    for _ in range(20):
        feed(lim, [5.0] * 30, full=True)
    assert lim.allowed > 40


def test_a_limit_that_is_not_used_does_not_grow() -> None:
    lim = AdaptiveLimit(floor=4, ceiling=200, limit=10)
    for _ in range(20):
        feed(lim, [5.0] * 30, full=False)
    assert lim.allowed == 10


def test_answers_slowed_by_queueing_shrink_the_limit_to_what_the_crm_serves() -> None:
    lim = AdaptiveLimit(floor=4, ceiling=200, limit=100)
    feed(lim, [5.0] * MIN_SAMPLES, full=True)  # the CRM's unloaded time
    # Answers take 4x as long: about three quarters of the requests were queued.
    for _ in range(30):
        feed(lim, [20.0] * 100, full=True)
    assert lim.allowed <= 12  # beta (6 log10 limit) of queue allowed at most


def test_one_round_shrinks_by_a_quarter_at_most() -> None:
    lim = AdaptiveLimit(floor=4, ceiling=200, limit=100)
    feed(lim, [1.0] * MIN_SAMPLES, full=True)
    before = lim.limit
    feed(lim, [1000.0] * 100, full=True)
    assert lim.limit >= before * 0.75


def test_the_no_load_time_is_forgotten_after_two_periods() -> None:
    """A CRM that became slower for good is not taken for a queue forever."""
    lim = AdaptiveLimit(floor=4, ceiling=200, limit=20, period_ms=100)
    feed(lim, [2.0] * 20, full=True, start_ms=0)
    assert lim.no_load_ms == 2.0
    feed(lim, [50.0] * 20, full=True, start_ms=150)
    assert lim.no_load_ms == 2.0  # the previous period still counts
    feed(lim, [50.0] * 20, full=True, start_ms=300)
    assert lim.no_load_ms == 50.0


@given(
    floor=st.integers(1, 50),
    span=st.integers(0, 300),
    rtts=st.lists(st.floats(0.0, 10_000.0), max_size=400),
    full=st.booleans(),
)
def test_the_limit_stays_within_its_bounds(
    floor: int, span: int, rtts: list[float], full: bool
) -> None:
    lim = AdaptiveLimit(floor=floor, ceiling=floor + span, limit=floor + span // 2)
    feed(lim, rtts, full=full)
    assert floor <= lim.allowed <= floor + span


def test_new_bounds_move_the_limit_into_them() -> None:
    lim = AdaptiveLimit(floor=4, ceiling=200, limit=100)
    lim.bound(8, 32)
    assert lim.allowed == 32
    lim.bound(64, 128)
    assert lim.allowed == 64


async def test_the_gate_holds_sends_to_the_limit_in_arrival_order() -> None:
    gate = Gate(AdaptiveLimit(floor=2, ceiling=2, limit=2))
    order: list[int] = []
    most = 0

    async def send(i: int) -> bool:
        nonlocal most
        waited = await gate.acquire()
        most = max(most, gate.inflight)
        order.append(i)
        await asyncio.sleep(0.01)
        gate.release()
        return waited

    waited = await asyncio.gather(*(send(i) for i in range(6)))
    assert most == 2
    assert order == list(range(6))
    assert waited == [False, False, True, True, True, True]
    assert gate.inflight == 0 and gate.waiting == 0


async def test_a_cancelled_waiter_gives_its_place_up() -> None:
    gate = Gate(AdaptiveLimit(floor=1, ceiling=1, limit=1))
    await gate.acquire()
    waiter = asyncio.create_task(gate.acquire())
    await asyncio.sleep(0)
    assert gate.waiting == 1
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert gate.waiting == 0
    gate.release()
    assert gate.inflight == 0
    assert await gate.acquire() is False


async def test_a_grown_limit_lets_waiting_sends_go() -> None:
    gate = Gate(AdaptiveLimit(floor=1, ceiling=10, limit=1))
    await gate.acquire()
    waiter = asyncio.create_task(gate.acquire())
    await asyncio.sleep(0)
    assert not waiter.done()
    gate.limit.bound(2, 10)  # as when an adjustment grows the limit
    gate.sample(1.0, 0.0)
    assert await asyncio.wait_for(waiter, 1.0) is True
    assert gate.inflight == 2


def test_a_worker_logs_its_active_connections_in_flight_limits() -> None:
    from structlog.testing import capture_logs

    from crmsync.connections import Connection

    inflight = InFlight(concurrency=200)
    conn = Connection("c1", "t", "salesforce", "a", "http://x", "tok", ())
    inflight.sending("c1", 1.0)
    gate = inflight.gate(conn)
    gate.sample(5.0, 1.0)
    with capture_logs() as logs:
        inflight.sending("c1", 1.0 + LOG_EVERY_MS)
    (entry,) = [e for e in logs if e["event"] == "worker.in_flight"]
    assert entry["connection"] == "c1" and entry["limit"] == gate.limit.allowed
    assert entry["no_load_ms"] == 5.0 and entry["floor"] == 64  # alone in the process


@pytest.mark.parametrize(
    ("windows", "settings", "alone", "expected"),
    [
        ((), {}, True, (64, 200)),  # alone: one whole claim at least
        ((), {}, False, (4, 200)),  # beside others, no limits: the floor
        ((RateWindow(100, 1000),), {}, False, (20, 200)),  # a paced burst of 20 kept whole
        ((RateWindow(100_000, 1000),), {}, False, (4, 200)),  # large bursts: the floor
        ((), {"max_in_flight": 2}, True, (2, 2)),  # the CRM's own cap bounds both
    ],
)
def test_in_flight_bounds(
    windows: tuple[RateWindow, ...], settings: dict[str, int], alone: bool, expected: object
) -> None:
    from crmsync.connections import Connection

    conn = Connection("c1", "t", "salesforce", "a", "http://x", "tok", windows, settings)
    assert bounds(conn, 200, alone=alone) == expected


def test_a_connection_keeps_its_gate_when_it_stops_being_alone() -> None:
    """Bounds follow whether the connection has the process to itself; what the
    gate learnt (its limit, its requests in flight) stays."""
    from crmsync.connections import Connection

    inflight = InFlight(concurrency=200)
    a = Connection("a", "t", "salesforce", "a", "http://x", "tok", ())
    inflight.sending("a", 0.0)
    gate = inflight.gate(a)
    assert gate.limit.floor == 64
    inflight.sending("b", 1.0)
    assert inflight.gate(a) is gate and gate.limit.floor == 4
