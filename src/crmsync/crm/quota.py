"""What a CRM's answer says about its quota: the parts both adapters share.

Each adapter reads its own CRM's headers (``salesforce.quota_block``,
``hubspot.quota_block``); this module holds the HTTP rules they have in
common (``Retry-After``) and the default wait when an answer gives no hint.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime

from multidict import CIMultiDict, CIMultiDictProxy

from crmsync import clock

DEFAULT_LIMITED_SECONDS = 1.0  # a limit answer without any hint of how long


def header_int(value: str | None) -> int | None:
    try:
        return int(str(value).strip()) if value is not None else None
    except ValueError:
        return None


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """``Retry-After`` as seconds: delta-seconds or an HTTP date."""
    if value is None or not value.strip():
        return None
    try:
        return max(0.0, float(value.strip()))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value.strip())
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - (clock.now() if now is None else now))


def seconds_to_midnight_utc(now: float) -> float:
    t = datetime.fromtimestamp(now, UTC)
    midnight = (t + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    return midnight.timestamp() - now


def lower_keys(headers: Mapping[str, str]) -> Mapping[str, str]:
    """Headers looked up by lower-case name: aiohttp's are case-insensitive already."""
    if isinstance(headers, CIMultiDictProxy | CIMultiDict):
        return headers
    return {k.lower(): v for k, v in headers.items()}
