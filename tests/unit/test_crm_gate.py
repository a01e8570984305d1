"""The CRM-wide breaker as one worker process asks it: cached verdicts, one
probe, outcomes reported only while they can matter."""

from __future__ import annotations

from typing import Literal

import pytest

from crmsync.clock import FakeClock
from crmsync.worker.crm_gate import CLOSED_RECHECK_MS, SUSPECT_MS, CrmGate, Verdict
from fakes import FakeBreaker

T0 = 1_700_000_000_000.0


def gate(
    verdict: bool | Literal["probe"] = True, opened_ms: int = 0, probe_until_ms: int = 0
) -> tuple[CrmGate, FakeBreaker, FakeClock]:
    clock = FakeClock(T0 / 1000)
    b = FakeBreaker(verdict, opened_ms, probe_until_ms)
    return CrmGate(b, clock), b, clock


async def test_a_closed_breaker_is_asked_again_after_the_recheck_time() -> None:
    g, b, clock = gate()
    assert await g.ask("hubspot") == Verdict(True, False, T0)
    clock.advance((CLOSED_RECHECK_MS - 1) / 1000)
    assert (await g.ask("hubspot")).allowed and b.asked == 1
    clock.advance(1 / 1000)
    await g.ask("hubspot")
    assert b.asked == 2


@pytest.mark.parametrize(
    ("opened_ms", "probe_until_ms", "retry_at"),
    [
        (T0 - 1000, 0, T0 - 1000 + 30_000),  # open: asked again at its recovery time
        (T0 - 40_000, T0 + 5000, T0 + 5000),  # a probe is out: when it must have reported
        (T0 - 40_000, 0, T0 + CLOSED_RECHECK_MS),  # recovery passed: soon, not at once
    ],
)
async def test_an_open_breaker_is_not_asked_before_it_may_let_a_probe_through(
    opened_ms: float, probe_until_ms: float, retry_at: float
) -> None:
    g, b, _ = gate(verdict=False, opened_ms=int(opened_ms), probe_until_ms=int(probe_until_ms))
    assert await g.ask("salesforce") == Verdict(False, False, retry_at)
    assert await g.ask("salesforce") == Verdict(False, False, retry_at) and b.asked == 1


async def test_the_probe_is_never_cached() -> None:
    g, b, _ = gate(verdict="probe")
    assert await g.ask("salesforce") == Verdict(True, True, T0)
    assert (await g.ask("salesforce")).probe and b.asked == 2


WORKED = [([True], False)]  # an earlier claim of the connection succeeded here
TRIPPED_AFTER_WORKING = [([True], False), ([False], True)]


@pytest.mark.parametrize(
    ("history", "outcomes", "probe", "tripped", "heard"),
    [
        ([], [True], False, False, None),  # all well: a success has nothing to reset
        # A request failure is the connection breaker's business; the CRM-wide one
        # hears connections: a claim that opened the breaker of a connection that
        # worked is one failure.
        ([], [True, False], False, False, None),
        (WORKED, [False, False, False], False, True, [False]),
        # A connection that never worked here is no evidence about the CRM.
        ([], [False, False, False], False, True, None),
        ([], [True], True, False, [True]),  # the probe's outcome decides
        (WORKED, [False], True, False, [False]),
        ([], [False], True, False, None),  # ... unless its connection never worked
        ([], [], True, False, None),  # a probe that sent nothing proves nothing
        (TRIPPED_AFTER_WORKING, [True, True], False, False, [True]),  # successes reset
    ],
)
async def test_the_crm_breaker_hears_connections_that_worked(
    history: list[tuple[list[bool], bool]],
    outcomes: list[bool],
    probe: bool,
    tripped: bool,
    heard: list[bool] | None,
) -> None:
    g, b, _ = gate()
    for earlier, trip in history:
        await g.report("hubspot", earlier, probe=False, tripped=trip, connection="c")
    before = len(b.recorded)
    await g.report("hubspot", outcomes, probe=probe, tripped=tripped, connection="c")
    assert (b.recorded[-1][1] if len(b.recorded) > before else None) == heard


async def test_one_misbehaving_connection_never_opens_the_crm_breaker() -> None:
    """Its own breaker opens once per outage (a failed probe of its own is not a
    new trip); the CRM-wide breaker would need ``threshold`` working connections."""
    g, b, _ = gate()
    await g.report("salesforce", [True], probe=False, connection="bad")
    await g.report("salesforce", [False] * 20, probe=False, tripped=True, connection="bad")
    for _ in range(10):  # its good neighbours keep succeeding
        await g.report("salesforce", [True], probe=False, connection="good")
    assert [o for _, o in b.recorded].count([False]) == 1
    assert b.recorded[-1] == ("salesforce", [True])


async def test_hostile_connections_that_never_worked_are_not_heard_at_all() -> None:
    g, b, _ = gate()
    for i in range(20):
        await g.report("salesforce", [False] * 5, probe=False, tripped=True, connection=f"h{i}")
        await g.report("salesforce", [False], probe=True, connection=f"h{i}")
    assert b.recorded == []


async def test_a_failure_forgets_the_cached_verdict_and_stays_suspect_for_a_minute() -> None:
    g, b, clock = gate()
    await g.ask("salesforce")
    await g.report("salesforce", [True], probe=False, connection="c")
    await g.report("salesforce", [False], probe=False, tripped=True, connection="c")
    await g.ask("salesforce")
    assert b.asked == 2  # asked at once after a failure
    clock.advance(SUSPECT_MS / 1000)
    await g.report("salesforce", [True], probe=False, connection="c")
    assert b.recorded == [("salesforce", [False])]
