"""The mock's limit spelling, written apart from crmsync's, reads every spelling the
way crmsync does: a connection added with ``--rate-limit X`` and a mock account
served with ``--sf-limit X`` mean the same window, and both refuse the same typos."""

from __future__ import annotations

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from crmsync.errors import UserError
from crmsync.ratelimit import parse_rate_limit
from crmsync_lab.mock.limits import DAY_MS, Window, parse_limit

UNITS = ["ms", "s", "sec", "second", "m", "min", "minute", "h", "hour", "d", "day"]
NO_LIMIT = ("0", "", "none", "unlimited")  # the mock's own: no window at all

space = st.sampled_from(["", " ", "  ", "\t"])
unit = st.one_of(
    st.sampled_from(UNITS),
    st.sampled_from(UNITS).map(lambda u: u + "s"),
    st.sampled_from(UNITS).map(str.upper),
    st.text(alphabet="abcdehimnorstuwy", min_size=1, max_size=7),
)
count = st.one_of(st.integers(0, 10**7).map(str), st.sampled_from(["007", "0", "1"]))
multiple = st.one_of(st.just(""), st.integers(0, 100).map(str))
spelled = st.builds(
    lambda s1, c, s2, s3, m, s4, u, s5: f"{s1}{c}{s2}/{s3}{m}{s4}{u}{s5}",
    space, count, space, space, multiple, space, unit, space,
)  # fmt: skip
anything = st.text(alphabet="0123456789/ sminhdayecortuwSM\t", max_size=14)


def crmsync_reads(spec: str) -> Window | None:
    try:
        w = parse_rate_limit(spec)
    except UserError:
        return None
    return Window(w.limit, w.window_ms)


def mock_reads(spec: str) -> Window | None:
    try:
        return parse_limit(spec)
    except ValueError:
        return None


@given(st.one_of(spelled, anything))
@example("100/s")
@example("1000/10s")
@example("6000/min")
@example("250000/day")
@example("100/0s")
@example("0/s")
@example("5/mss")
@example("5/ss")
@example("100 / 10 Seconds")
def test_the_mock_reads_limits_as_crmsync_does(spec: str) -> None:
    if spec.strip().lower() in NO_LIMIT:
        return
    assert mock_reads(spec) == crmsync_reads(spec), spec


@pytest.mark.parametrize(
    ("spec", "window"),
    [
        ("100/s", Window(100, 1000)),
        ("50/s", Window(50, 1000)),
        ("100/10s", Window(100, 10_000)),
        ("190/10 seconds", Window(190, 10_000)),
        ("6000/min", Window(6000, 60_000)),
        ("250000/day", Window(250_000, DAY_MS)),
        ("5/250ms", Window(5, 250)),
        ("0", Window(0, 1000)),
        ("unlimited", Window(0, 1000)),
        (" None ", Window(0, 1000)),
    ],
)
def test_spellings(spec: str, window: Window) -> None:
    assert parse_limit(spec) == window


@pytest.mark.parametrize("spec", ["100", "100/", "/s", "100/fortnight", "-1/s", "0/s", "1/0s"])
def test_a_bad_spelling_is_one_sentence_quoting_it(spec: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_limit(spec)
    message = str(caught.value)
    assert repr(spec) in message and "\n" not in message
