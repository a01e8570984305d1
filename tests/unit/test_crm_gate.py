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


@pytest.mark.parametrize(
    ("history", "outcomes", "probe", "reported"),
    [
        ([], [True], False, False),  # all well: a success has nothing to reset
        ([], [True, False], False, True),  # a failure always counts
        ([], [True], True, True),  # the probe's outcome decides
        ([], [], True, False),  # a probe that sent nothing proves nothing
        ([[False]], [True], False, True),  # after a failure here, successes reset
    ],
)
async def test_outcomes_are_reported_while_they_can_matter(
    history: list[list[bool]], outcomes: list[bool], probe: bool, reported: bool
) -> None:
    g, b, _ = gate()
    for earlier in history:
        await g.report("hubspot", earlier, probe=False)
    before = len(b.recorded)
    await g.report("hubspot", outcomes, probe=probe)
    assert (len(b.recorded) > before) == reported


async def test_a_failure_forgets_the_cached_verdict_and_stays_suspect_for_a_minute() -> None:
    g, b, clock = gate()
    await g.ask("salesforce")
    await g.report("salesforce", [False], probe=False)
    await g.ask("salesforce")
    assert b.asked == 2  # asked at once after a failure
    clock.advance(SUSPECT_MS / 1000)
    await g.report("salesforce", [True], probe=False)
    assert b.recorded == [("salesforce", [False])]
