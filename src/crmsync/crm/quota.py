"""What a CRM's answer says about its quota: the parts both adapters share.

Each adapter reads its own CRM's headers (``salesforce.quota_block``,
``hubspot.quota_block``); this module holds the HTTP rules they have in
common (``Retry-After``), the default wait when an answer gives no hint, and
the one rule that bounds every wait a CRM asks for (``bounded``): numbers from
outside are clamped to ``CRMSYNC_MAX_BLOCK_SECONDS``, and a wait that is no
wait at all (0, negative, garbage, inf, NaN) is the CRM's window instead, so a
misbehaving CRM can neither block a connection for years nor be hammered.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime

from multidict import CIMultiDict, CIMultiDictProxy

from crmsync import clock

DEFAULT_LIMITED_SECONDS = 1.0  # a limit answer without any hint of how long
MAX_BLOCK_SECONDS = 3600.0  # CRMSYNC_MAX_BLOCK_SECONDS' default


def bounded(wait: float | None, *, window: float, most: float = MAX_BLOCK_SECONDS) -> float:
    """The wait a CRM asked for (None: no hint), as crmsync will honour it: at
    most ``most``; the CRM's ``window`` when the hint is missing or no wait at
    all (0, negative, inf, NaN). The window itself is bounded the same way."""
    most = most if math.isfinite(most) and most > 0 else MAX_BLOCK_SECONDS
    floor = window if math.isfinite(window) and window > 0 else DEFAULT_LIMITED_SECONDS
    floor = min(floor, most)
    if wait is None or not math.isfinite(wait) or wait <= 0:
        return floor
    return min(wait, most)


def header_int(value: str | None) -> int | None:
    """A header's integer (None when missing or not one)."""
    try:
        return int(str(value).strip()) if value is not None else None
    except ValueError:
        return None


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """``Retry-After`` as seconds (delta-seconds or an HTTP date), or None when it
    is missing or garbage; the number as sent (``bounded`` makes it a wait)."""
    if value is None or not value.strip():
        return None
    try:
        return float(value.strip())
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value.strip())
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp() - (clock.now() if now is None else now)


def seconds_to_midnight_utc(now: float) -> float:
    t = datetime.fromtimestamp(now, UTC)
    midnight = (t + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    return midnight.timestamp() - now


def lower_keys(headers: Mapping[str, str]) -> Mapping[str, str]:
    """Headers looked up by lower-case name: aiohttp's are case-insensitive already."""
    if isinstance(headers, CIMultiDictProxy | CIMultiDict):
        return headers
    return {k.lower(): v for k, v in headers.items()}


@dataclass(frozen=True, slots=True)
class Usage:
    """What one answer says of the CRM's budget: ``used`` of ``most`` requests of
    the day (every app's), and ``burst``, a 10-second limit it names (HubSpot)."""

    used: int | None = None
    most: int | None = None
    burst: int | None = None

    @property
    def daily(self) -> bool:
        return self.used is not None and self.most is not None and self.most > 0
