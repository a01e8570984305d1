"""Pure parts of the operator figures: the sync-lag histogram, the per-second ring
buffer and its rates, and `crmsync status` rendered at 80 columns."""

from __future__ import annotations

import math
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from rich.console import Console

from crmsync import counters, status_view
from crmsync.timeseries import Point, Raw, Ring, Sampler, limit_per_second, point

# -- sync lag histogram ---------------------------------------------------------------


@given(st.lists(st.floats(min_value=-5_000, max_value=10_000_000), min_size=1, max_size=200))
def test_sync_lag_percentiles_bound_the_true_quantile(lags: list[float]) -> None:
    counts: dict[str, int] = {}
    for lag in lags:
        counters.record_sync_lag(counts, 1_000_000, 1_000_000 + lag)
    clamped = sorted(max(0.0, x) for x in lags)
    assert sum(n for k, n in counts.items() if k != counters.SYNC_LAG_SUM) == len(lags)
    assert abs(counts[counters.SYNC_LAG_SUM] - sum(clamped)) <= len(lags)
    bounds = [float(b) for b in counters.SYNC_LAG_BOUNDS_MS] + [math.inf]
    for q in (0.5, 0.99):
        p = counters.sync_lag_percentile(counts, q)
        assert p is not None
        true = clamped[max(0, math.ceil(q * len(clamped)) - 1)]
        # The answer is the upper bound of the bucket holding the true quantile.
        assert p >= true
        assert p == min(b for b in bounds if b >= true)


def test_sync_lag_fields_and_an_empty_histogram() -> None:
    counts: dict[str, int] = {}
    counters.record_sync_lag(counts, 10_000, 10_040)
    counters.record_sync_lag(counts, 10_000, 9_000)  # clocks disagree: counts as 0
    counters.record_sync_lag(counts, 0, 7_200_000)  # two hours: past the last bound
    assert counts == {"synclag_50": 2, "synclag_inf": 1, "synclag_sum_ms": 7_200_040}
    assert counters.sync_lag_percentile({}, 0.5) is None
    assert counters.sync_lag_percentile(counts, 0.99) == math.inf


# -- the per-second ring buffer ------------------------------------------------------


def _raw(t: int, n: int, queued: int = 0) -> Raw:
    return Raw(t, requests=n, records=n, rate_limited=0, retried=0, dead=0, queued=queued)


def test_point_rates_and_resets() -> None:
    p = point(_raw(1000, 10), _raw(3000, 60, 4), 100.0)
    assert p == Point(3000, 25.0, 25.0, 100.0, 4, 0.0, 0.0, 0.0)
    assert point(_raw(1000, 10), _raw(1000, 20), None) is None  # no time passed
    assert point(_raw(1000, 10), _raw(2000, 3), None) is None  # counters were reset


@given(
    st.integers(min_value=1, max_value=50),
    st.lists(st.integers(min_value=1, max_value=3000), min_size=1, max_size=120),
    st.integers(min_value=0, max_value=400_000),
)
def test_ring_keeps_the_last_points_and_answers_since(
    capacity: int, steps: list[int], since: int
) -> None:
    sampler = Sampler(capacity)
    t, n, taken = 0, 0, []
    sampler.observe("c", _raw(t, n), 10.0)
    for step in steps:
        t += step
        n += step // 100
        p = sampler.observe("c", _raw(t, n), 10.0)
        assert p is not None
        taken.append(p)
    ring = sampler.rings["c"]
    assert list(ring.points) == taken[-capacity:]
    assert ring.since(since) == [p for p in taken[-capacity:] if p.t > since]
    assert sampler.series(["c", "gone"], since) == {
        "c": [p.as_list() for p in taken[-capacity:] if p.t > since]
    }
    sampler.forget([])
    assert sampler.rings == {} and sampler.last == {}


def test_ring_capacity_default_is_ten_minutes() -> None:
    assert Ring().points.maxlen == 600


def test_limit_per_second_is_the_tightest_short_window() -> None:
    def w(limit: int, ms: int) -> dict[str, int]:
        return {"limit": limit, "window_ms": ms}

    assert limit_per_second([]) is None
    assert limit_per_second([w(100, 1000)]) == 100
    assert limit_per_second([w(100, 10_000), w(250, 1000)]) == 10
    # A daily budget does not flatten the per-second line; alone it is what there is.
    assert limit_per_second([w(100, 10_000), w(5000, 86_400_000)]) == 10
    assert limit_per_second([w(86_400, 86_400_000)]) == 1


# -- `crmsync status` at 80 columns ----------------------------------------------------

ID_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789-_.:"


def _connection(draw: Any) -> dict[str, Any]:
    cid = draw(st.text(ID_CHARS, min_size=1, max_size=36))
    paused = draw(st.booleans())
    reachable = draw(st.booleans())
    c: dict[str, Any] = {
        "id": cid,
        "tenant": "t",
        "crm": draw(st.sampled_from(["salesforce", "hubspot"])),
        "paused": paused,
        "paused_reason": draw(st.text(min_size=0, max_size=300)) if paused else None,
        "sync": {"synced": draw(st.integers(0, 10**9))},
        "dead_letters": draw(st.integers(0, 10**7)),
    }
    if reachable:
        n = st.integers(0, 10**8)
        c.update(
            queue={"ready": draw(n), "leased": draw(n), "delayed": draw(n), "requeue": 0},
            breaker=draw(st.sampled_from(["closed", "open", "half_open"])),
            blocked_for_s=draw(st.sampled_from([0.0, 2.5, 3600.0])),
            counters={"crm_rate_limited": draw(n), "token_refreshes": draw(st.integers(0, 10**6))},
            oldest_age_s=draw(st.none() | st.floats(0, 10**7)),
            sync_lag_ms={"p99": draw(st.none() | st.sampled_from([50.0, 3_600_000.0, math.inf]))},
        )
    return c


@st.composite
def reports(draw: Any) -> dict[str, Any]:
    conns = [_connection(draw) for _ in range(draw(st.integers(0, 6)))]
    conns = list({c["id"]: c for c in conns}.values())
    report: dict[str, Any] = {
        "connections": conns,
        "totals": {"contacts": draw(st.integers(0, 10**9)), "outbox": 0, "dead_letters": 3},
    }
    if draw(st.booleans()):
        report["redis_error"] = "Error 111 connecting to 127.0.0.1:6379. Connection refused."
    return report


def _lines(report: dict[str, Any], width: int) -> list[str]:
    console = Console(width=width, record=True, color_system=None, force_terminal=False)
    console.print(status_view.render(report, width))
    return console.export_text().splitlines()


@settings(max_examples=60, deadline=None)
@given(reports(), st.sampled_from([80, 100, 140, 60, 40]))
def test_status_fits_the_screen_and_never_cuts_an_id(report: dict[str, Any], width: int) -> None:
    lines = _lines(report, width)
    assert all(len(line) <= width for line in lines), "\n".join(lines)
    text = "\n".join(lines)
    assert "…" not in text.replace(" paused: ", "")  # nothing is cut with an ellipsis
    for c in report["connections"]:
        # An id up to half the screen sits whole on one line; a longer one folds
        # over lines without losing a character.
        if len(c["id"]) <= width // 2 - 1:
            assert any(c["id"] in line for line in lines), (c["id"], text)
        else:
            assert c["id"] in "".join(line.strip() for line in lines)
        state, _ = status_view.state_of(c)
        if c.get("breaker") == "open" and not c["paused"]:
            assert state == "breaker open"


def test_status_names_the_breaker_and_puts_reasons_under_the_table() -> None:
    reason = "CRM rejected the token (401): INVALID_SESSION_ID Session expired or invalid " * 2
    report = {
        "connections": [
            {
                "id": "acme-salesforce-prod",
                "tenant": "acme",
                "crm": "salesforce",
                "paused": True,
                "paused_reason": reason.strip(),
                "sync": {"synced": 1200},
                "dead_letters": 0,
                "queue": {"ready": 5, "leased": 0, "delayed": 0, "requeue": 0},
                "breaker": "closed",
                "blocked_for_s": 0.0,
                "counters": {},
                "oldest_age_s": 75.0,
                "sync_lag_ms": {"p99": 250.0},
            },
            {
                "id": "acme-hubspot-prod",
                "tenant": "acme",
                "crm": "hubspot",
                "paused": False,
                "paused_reason": None,
                "sync": {"synced": 4},
                "dead_letters": 2,
                "queue": {"ready": 0, "leased": 1, "delayed": 3, "requeue": 0},
                "breaker": "open",
                "blocked_for_s": 0.0,
                "counters": {"crm_rate_limited": 7},
                "oldest_age_s": None,
                "sync_lag_ms": {"p99": None},
            },
        ],
        "totals": {"contacts": 1204, "outbox": 0, "dead_letters": 2},
    }
    lines = _lines(report, 80)
    row: dict[str, str] = {}
    for line in lines:
        if line.startswith("acme-"):
            row.setdefault(line.split()[0], line)  # the table's row, not the notes
    assert "breaker open" in row["acme-hubspot-prod"]
    assert "paused" in row["acme-salesforce-prod"] and "1m" in row["acme-salesforce-prod"]
    assert "250ms" in row["acme-salesforce-prod"]
    body = " ".join(line.strip() for line in lines)
    assert f"acme-salesforce-prod paused: {reason.strip()}" in body
    # The reason wraps at the screen's width, under the table: a few lines, not 27.
    assert sum(1 for line in lines if "INVALID_SESSION_ID" in line) <= 3


def test_status_lists_the_token_refreshes_of_oauth_connections() -> None:
    base = {"tenant": "t", "paused": False, "sync": {}, "dead_letters": 0, "breaker": "closed"}
    queue = {"ready": 0, "leased": 0, "delayed": 0, "requeue": 0}
    report: dict[str, Any] = {
        "connections": [
            {**base, "id": "acme-sf", "crm": "salesforce", "queue": queue,
             "counters": {"token_refreshes": 12}},
            {**base, "id": "acme-hs", "crm": "hubspot", "queue": queue, "counters": {}},
        ],
        "totals": {"contacts": 1, "outbox": 0, "dead_letters": 0},
    }  # fmt: skip
    assert "token refreshes: acme-sf 12" in _lines(report, 80)
    report["connections"][0]["counters"] = {}
    assert not any("token refreshes" in line for line in _lines(report, 80))


def test_status_counts_the_adopted_records() -> None:
    base = {"tenant": "t", "paused": False, "sync": {}, "dead_letters": 0, "breaker": "closed"}
    queue = {"ready": 0, "leased": 0, "delayed": 0, "requeue": 0}
    report: dict[str, Any] = {
        "connections": [
            {**base, "id": "acme-sf", "crm": "salesforce", "queue": queue,
             "counters": {"adopted": 40, "created": 60}},
            {**base, "id": "acme-hs", "crm": "hubspot", "queue": queue, "counters": {}},
        ],
        "totals": {"contacts": 100, "outbox": 0, "dead_letters": 0},
    }  # fmt: skip
    assert "adopted records: acme-sf 40" in _lines(report, 80)
    report["connections"][0]["counters"] = {"created": 100}
    assert not any("adopted" in line for line in _lines(report, 80))
