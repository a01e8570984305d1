"""The mock's models of the CRMs' own limits, on a fake clock (times passed in).

Each window is checked against a brute-force reading of its rule over
generated arrival sequences: a request is admitted exactly when fewer than
``max`` requests were admitted in the window before it (``(t - W, t]``).
"""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crmsync_lab.mock.clock import AccountClock, LocalDays
from crmsync_lab.mock.limits import CONCURRENT, DAILY, SECONDLY, TEN_SECONDLY
from crmsync_lab.mock.models import HubSpotLimits, SalesforceLimits, tier

DAY_MS = 86_400_000
T0 = 1_700_000_000.0  # a wall time (epoch seconds)
NY = ZoneInfo("America/New_York")


def brute(times_ms: list[int], limit: int, window_ms: int) -> list[bool]:
    admitted: list[int] = []
    out = []
    for t in times_ms:
        ok = sum(1 for a in admitted if a > t - window_ms) < limit
        out.append(ok)
        if ok:
            admitted.append(t)
    return out


def arrivals(window_ms: int) -> st.SearchStrategy[list[int]]:
    """Sorted arrival times (ms): bursts, exact window edges, and long gaps."""
    gap = st.one_of(
        st.just(0),
        st.integers(1, 5),
        st.sampled_from([window_ms - 1, window_ms, window_ms + 1]),
        st.integers(0, 2 * window_ms),
    )
    return st.lists(gap, min_size=1, max_size=40).map(
        lambda gaps: [sum(gaps[: i + 1]) for i in range(len(gaps))]
    )


@given(st.integers(1, 5), arrivals(DAY_MS))
def test_salesforce_allocation_is_a_rolling_day(allocation: int, times: list[int]) -> None:
    lim = SalesforceLimits(allocation, AccountClock(mono=0.0))
    got = []
    for i, t in enumerate(times):
        wall = T0 + t / 1000.0
        refusal = lim.admit(float(i), wall)
        got.append(refusal is None)
        if refusal is not None:
            assert refusal.policy == DAILY and refusal.window.limit == allocation
        used = lim.daily(float(i), wall)[0]
        assert used == sum(
            1 for a, ok in zip(times[: i + 1], got, strict=True) if ok and a > t - DAY_MS
        )
    assert got == brute(times, allocation, DAY_MS)
    assert lim.violations == got.count(False)


def test_salesforce_allocation_frees_as_the_oldest_request_turns_a_day_old() -> None:
    lim = SalesforceLimits(2, AccountClock(mono=0.0))
    assert lim.admit(0, T0) is None and lim.admit(0, T0 + 3600) is None
    refusal = lim.admit(0, T0 + 7200)
    assert refusal is not None and refusal.retry_after == pytest.approx(86_400 - 7200)
    assert lim.daily(0, T0 + 86_399.999) == (2, 2)
    assert lim.admit(0, T0 + 86_400) is None  # the first one has left the window
    assert lim.headers(0, T0 + 86_400, salesforce=True) == {"Sforce-Limit-Info": "api-usage=2/2"}


def test_a_compressed_day_lasts_day_seconds_of_real_time() -> None:
    clock = AccountClock(day_seconds=20, mono=100.0)
    lim = SalesforceLimits(1, clock)
    assert lim.admit(100.0, clock.wall(100.0)) is None
    refusal = lim.admit(119.9, clock.wall(119.9))
    assert refusal is not None and refusal.retry_after == pytest.approx(0.1, abs=1e-3)
    assert lim.admit(120.0, clock.wall(120.0)) is None
    clock.advance(86_400)  # a control request moves the account a day ahead
    assert lim.admit(120.0, clock.wall(120.0)) is None
    with pytest.raises(ValueError, match="never goes back"):
        clock.advance(-1)


@pytest.mark.parametrize(
    ("starts", "at", "refused"),
    [
        # 25 requests of 30 s each: once they have run 20 s, the cap is reached.
        ([0.0] * 25, 19.9, False),
        ([0.0] * 25, 20.0, True),
        ([0.0] * 25, 30.0, False),  # they have ended
        ([0.0] * 24, 25.0, False),
        ([0.0] * 24 + [5.0], 24.9, False),  # the last one is not long-running yet
        ([0.0] * 24 + [5.0], 25.0, True),
    ],
)
def test_salesforce_caps_long_running_requests(
    starts: list[float], at: float, refused: bool
) -> None:
    lim = SalesforceLimits(1_000, AccountClock(mono=0.0))
    for start in starts:
        assert lim.admit(start, T0 + start) is None
        lim.started(start, 30.0)
    lim.started(0.0, 1.0)  # a quick request never counts
    refusal = lim.admit(at, T0 + at)
    assert (refusal is not None) == refused
    if refusal is not None:
        assert refusal.policy == CONCURRENT and refusal.retry_after == pytest.approx(30.0 - at)


@given(st.integers(1, 5), arrivals(10_000))
def test_hubspot_ten_second_window_by_tier(burst: int, times: list[int]) -> None:
    lim = HubSpotLimits(burst, 10**9, AccountClock(mono=0.0))
    got = []
    for t in times:
        refusal = lim.admit(t / 1000.0, T0 + t / 1000.0)
        got.append(refusal is None)
        if refusal is not None:
            assert refusal.policy == TEN_SECONDLY and refusal.window.window_ms == 10_000
    assert got == brute(times, burst, 10_000)


@pytest.mark.parametrize(("spec", "burst", "daily"), [
    ("100", 100, 250_000),
    ("190", 190, 650_000),
    ("250", 250, 1_650_000),
    ("Enterprise", 190, 1_000_000),
    ("starter", 100, 250_000),
])  # fmt: skip
def test_tiers(spec: str, burst: int, daily: int) -> None:
    assert tier(spec) == (burst, daily)


@pytest.mark.parametrize("spec", ["150", "gold", ""])
def test_an_unknown_tier_is_one_sentence(spec: str) -> None:
    with pytest.raises(ValueError, match="is not a HubSpot tier") as caught:
        tier(spec)
    assert "\n" not in str(caught.value)


def _wall(local: str) -> float:
    return datetime.fromisoformat(local).replace(tzinfo=NY).timestamp()


def test_hubspot_daily_limit_resets_at_the_portals_midnight() -> None:
    lim = HubSpotLimits(100, 2, AccountClock(mono=0.0), time_zone="America/New_York")
    before = _wall("2024-03-09T23:59:58")
    assert lim.admit(0.0, before) is None and lim.admit(20.0, before) is None
    refusal = lim.admit(40.0, before + 1)
    assert refusal is not None and refusal.policy == DAILY
    assert refusal.retry_after == pytest.approx(1.0)
    headers = lim.headers(40.0, before + 1, salesforce=False)
    assert headers["X-HubSpot-RateLimit-Daily-Remaining"] == "0"
    # Midnight in New York, not in UTC: at 00:00 UTC (19:00 local) nothing resets.
    assert lim.admit(60.0, _wall("2024-03-10T00:00:00")) is None
    assert lim.daily(60.0, _wall("2024-03-10T00:00:00")) == (1, 2)
    utc_midnight = datetime.fromisoformat("2024-03-11T00:00:00+00:00").timestamp()
    assert lim.admit(80.0, utc_midnight) is None
    assert lim.admit(100.0, utc_midnight) is not None  # 2 used on the 10th, New York time
    assert lim.violations_by == {DAILY: 2}


def test_a_local_day_follows_daylight_saving_time() -> None:
    days = LocalDays(NY)
    days.roll(_wall("2024-03-10T12:00:00"))  # clocks went forward at 02:00
    assert days.next_midnight - days.start == 23 * 3600 and days.label() == "2024-03-10"
    days.roll(_wall("2024-11-03T12:00:00"))  # and back
    assert days.next_midnight - days.start == 25 * 3600


def test_hubspot_search_has_its_own_rate_and_counts_toward_the_day() -> None:
    lim = HubSpotLimits(100, 7, AccountClock(mono=0.0), search_per_second=5)
    results = [lim.admit(0.1 * i, T0, search=True) for i in range(6)]
    assert [r is None for r in results] == [True] * 5 + [False]
    assert results[5] is not None and results[5].policy == SECONDLY
    assert lim.admit(0.6, T0) is None  # other requests are not held back by search
    assert lim.primary(0.6) is not None and lim.primary(0.6)[1] == 99  # type: ignore[index]
    assert lim.daily(0.6, T0) == (6, 7)
    assert lim.admit(1.2, T0, search=True) is None
    assert lim.admit(1.3, T0) is not None  # the day is spent: 7 of 7
