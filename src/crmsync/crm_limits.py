"""The CRMs' own limit models: what a connection's settings ask the limiter to hold.

A connection's ``limit_model`` setting is ``windows`` (the sliding windows of
``--rate-limit``, e.g. 100/s: the default of connections stored before this
setting existed, and of any ``connections add`` given ``--rate-limit``) or
``crm`` (the default of a new connection without ``--rate-limit``):

- Salesforce: the org's rolling 24-hour allocation (``daily_limit``, learnt from
  ``Sforce-Limit-Info: api-usage=used/max`` on every answer and from ``/limits``),
  spent at most 1/24 of it per sliding hour, and a cap of ``concurrency`` (25)
  requests in flight across every worker.
- HubSpot: a sliding 10-second window of the ``tier`` (100, 190 or 250) and the
  portal's daily limit, a fixed window from midnight to midnight in its
  ``time_zone``; both learnt from the ``X-HubSpot-RateLimit-*`` headers.

The sliding windows go through the ordinary limiter (``ratelimit.py``); what
they cannot express (the learnt budget, the portal's day, the in-flight cap) is
a ``CrmSpec`` the claim script holds at Redis ``TIME`` beside them
(``queue/lua/_lib.lua``, ``crm_*``). ``day_seconds`` shortens the CRM's day for
tests and demos against a mock whose day is compressed the same way.
docs/LIMITS.md explains the choices.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from crmsync.ratelimit import RateWindow

DAY_MS = 86_400_000
MODELS = ("windows", "crm")
SF_CONCURRENCY = 25  # Salesforce: long-running requests per org at once
SF_ALLOCATION = 100_000  # an Enterprise org's base allocation, until learnt
SF_PACE_PARTS = 24  # at most 1/24 of the allocation per sliding 1/24 of the day
HS_TEN_SECONDS_MS = 10_000
# HubSpot tiers (developers.hubspot.com, API usage guidelines): per 10 s, per day.
HS_TIERS: dict[str, tuple[int, int]] = {
    "free": (100, 250_000),
    "starter": (100, 250_000),
    "professional": (190, 650_000),
    "enterprise": (190, 1_000_000),
    "capacity": (250, 1_650_000),  # the API limit increase pack (on professional)
}
HS_TIER_BY_BURST = {100: "starter", 190: "professional", 250: "capacity"}
HS_DEFAULT_TIER = "starter"  # the smallest: never over a portal's real limit
# A budget spent with no hint of when it frees is looked at again after this
# share of the day (5 minutes of a real day), through ``/limits`` where there is one.
RECHECK_PARTS = 288
MIN_RECHECK_MS = 50
# The portal's new day is used this long after our midnight: clocks differ.
MIDNIGHT_GUARD_PARTS = 20_000
MIN_MIDNIGHT_GUARD_MS = 50
MAX_MIDNIGHT_GUARD_MS = 5000


def tier(spec: Any) -> str:
    """A HubSpot tier by name or by its 10-second limit, as its name; ValueError
    ends a sentence ("must ...")."""
    text = str(spec).strip().lower()
    if not isinstance(spec, bool) and text.isdigit() and int(text) in HS_TIER_BY_BURST:
        return HS_TIER_BY_BURST[int(text)]
    if text in HS_TIERS:
        return text
    raise ValueError("must be 100, 190 or 250 (requests per 10 s) or one of " + ", ".join(HS_TIERS))


def time_zone(name: Any) -> str:
    """An IANA time zone name; ValueError ends a sentence."""
    if isinstance(name, str) and name.strip():
        try:
            ZoneInfo(name.strip())
            return name.strip()
        except (ZoneInfoNotFoundError, ValueError):
            pass
    raise ValueError("must be an IANA time zone such as UTC or America/New_York")


def model_of(settings: Mapping[str, Any]) -> str:
    m = settings.get("limit_model")
    return m if m in MODELS else "windows"


@dataclass(frozen=True, slots=True)
class CrmSpec:
    """What the claim script holds besides the sliding windows.

    ``kind``: ``rolling`` (Salesforce: the learnt used/max of a rolling day) or
    ``daily`` (HubSpot: our count since the portal's midnight plus the other
    apps' use learnt). ``allocation``: the daily budget until one is learnt.
    ``base``: what the sliding windows were computed from (the allocation, or
    the tier's 10-second limit), so a learnt value scales them.
    """

    kind: str
    allocation: int
    base: int
    concurrency: int = 0  # requests in flight across all workers; 0 = no cap
    day_ms: int = DAY_MS
    time_zone: str = "UTC"

    @property
    def recheck_ms(self) -> int:
        return max(MIN_RECHECK_MS, self.day_ms // RECHECK_PARTS)

    @property
    def guard_ms(self) -> int:
        return min(
            MAX_MIDNIGHT_GUARD_MS, max(MIN_MIDNIGHT_GUARD_MS, self.day_ms // MIDNIGHT_GUARD_PARTS)
        )

    def script_arg(self, now_ms: int, margin: float) -> str:
        """The claim script's ARGV: ``cap;kind;allocation;reserve share;base;
        recheck_ms;guard_ms;b0;b1;b2;b3`` (b: the portal's midnights around now)."""
        bounds = day_bounds(now_ms, self.time_zone, self.day_ms) if self.kind == "daily" else ()
        parts = [
            self.concurrency,
            "r" if self.kind == "rolling" else "d",
            self.allocation,
            repr(round(margin, 6)),
            self.base,
            self.recheck_ms,
            self.guard_ms,
            *bounds,
        ]
        return ";".join(str(p) for p in parts)


def _int(settings: Mapping[str, Any], name: str, default: int) -> int:
    v = settings.get(name)
    return v if isinstance(v, int) and not isinstance(v, bool) and v > 0 else default


def day_ms_of(settings: Mapping[str, Any]) -> int:
    v = settings.get("day_seconds")
    if isinstance(v, int | float) and not isinstance(v, bool) and 0 < v <= 86_400:
        return max(1000, round(v * 1000))
    return DAY_MS


def spec_of(crm: str, settings: Mapping[str, Any]) -> CrmSpec | None:
    """The CRM model's spec of a connection, None under the windows model."""
    if model_of(settings) != "crm":
        return None
    day = day_ms_of(settings)
    if crm == "salesforce":
        alloc = _int(settings, "daily_limit", SF_ALLOCATION)
        cap = _int(settings, "concurrency", SF_CONCURRENCY)
        return CrmSpec("rolling", alloc, alloc, cap, day)
    burst, daily = HS_TIERS[_tier_or_default(settings)]
    zone = settings.get("time_zone")
    return CrmSpec(
        "daily",
        _int(settings, "daily_limit", daily),
        burst,
        _int(settings, "concurrency", 0),
        day,
        zone if isinstance(zone, str) and zone else "UTC",
    )


def _tier_or_default(settings: Mapping[str, Any]) -> str:
    try:
        return tier(settings.get("tier", HS_DEFAULT_TIER))
    except ValueError:
        return HS_DEFAULT_TIER


def windows_of(crm: str, settings: Mapping[str, Any]) -> tuple[RateWindow, ...]:
    """The sliding windows of the CRM model: Salesforce 1/24 of the allocation per
    1/24 of the day; HubSpot the tier per 10 seconds."""
    spec = spec_of(crm, settings)
    if spec is None:
        return ()
    if spec.kind == "rolling":
        pace = math.ceil(spec.allocation / SF_PACE_PARTS)
        return (RateWindow(pace, spec.day_ms // SF_PACE_PARTS),)
    return (RateWindow(spec.base, HS_TEN_SECONDS_MS),)


@lru_cache(maxsize=4096)
def _local_day(start_day: int, zone: str) -> tuple[int, int]:
    """[start, end) in epoch ms of the local calendar day ``start_day`` (ordinal)."""
    tz = ZoneInfo(zone)
    d = datetime.fromordinal(start_day)
    start = d.replace(tzinfo=tz)
    # A calendar day in local terms: 23 or 25 hours across a DST change.
    end = (d + timedelta(days=1)).replace(tzinfo=tz)
    return round(start.timestamp() * 1000), round(end.timestamp() * 1000)


def midnights(now_ms: int, zone: str) -> tuple[int, int]:
    """[start, end) in epoch ms of the day holding ``now_ms`` in ``zone``: from one
    local midnight to the next (a DST day lasts 23 or 25 hours; a zone whose
    clocks skip midnight starts the day at the first instant after it)."""
    tz = ZoneInfo(zone)
    local = datetime.fromtimestamp(now_ms / 1000, tz)
    start, end = _local_day(local.toordinal(), zone)
    if now_ms < start:  # a skipped midnight maps past now: the previous day
        start, end = _local_day(local.toordinal() - 1, zone)
    elif now_ms >= end:
        start, end = _local_day(local.toordinal() + 1, zone)
    return start, end


def day_bounds(now_ms: int, zone: str, day_ms: int = DAY_MS) -> tuple[int, int, int, int]:
    """Four day boundaries around ``now_ms``: the start of yesterday, of today,
    of tomorrow and of the day after (epoch ms). The claim script picks the day
    holding Redis time among them, so a worker's clock may be hours off.

    A day compressed to ``day_ms`` (tests, demos) is a run of equal days, each
    starting where real time modulo ``day_ms`` equals the zone's UTC offset
    scaled into it (a mock compresses its clock the same way)."""
    if day_ms == DAY_MS:
        start, end = midnights(now_ms, zone)
        before, _ = midnights(start - 1, zone)
        _, after = midnights(end, zone)
        return before, start, end, after
    offset = datetime.fromtimestamp(now_ms / 1000, ZoneInfo(zone)).utcoffset()
    shift = round((offset.total_seconds() if offset else 0.0) * 1000 * day_ms / DAY_MS)
    start = (now_ms + shift) // day_ms * day_ms - shift
    return start - day_ms, start, start + day_ms, start + 2 * day_ms


def next_day_ms(spec: CrmSpec, now_ms: int) -> int:
    """When the portal's next day is used (its next midnight, plus the guard)."""
    for a, b in itertools.pairwise(day_bounds(now_ms, spec.time_zone, spec.day_ms)):
        if a + spec.guard_ms <= now_ms < b + spec.guard_ms:
            return b + spec.guard_ms
    return now_ms + spec.recheck_ms


def hold_seconds(
    spec: CrmSpec, asked: float, why: str | None, *, daily: bool, now_ms: int, most: float
) -> float:
    """How long every worker holds a connection under the CRM model back after the
    CRM refused or said its budget is spent (``asked``: the adapter's reading of
    the answer alone; ``daily``: the answer names the daily limit). Salesforce
    gives no wait: over its concurrency cap, the adapter's short one; over the
    allocation, until the budget is looked at again (the claim script then holds
    the connection until the learnt budget has room). HubSpot's daily limit:
    until the portal's midnight. Never more than ``most``."""
    if spec.kind == "rolling":
        if why is not None and "ConcurrentRequests" in why:
            return min(asked, most)
        return min(spec.recheck_ms / 1000.0, most)
    if daily or (why is not None and why.startswith("DAILY")):
        return min(max(0.0, (next_day_ms(spec, now_ms) - now_ms) / 1000.0), most)
    return min(asked, most)
