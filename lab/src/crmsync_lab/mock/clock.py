"""Each mock account's own calendar: real time, optionally sped up and moved.

Daily limits (Salesforce's rolling 24 hours, HubSpot's day that ends at the
portal's midnight) cannot be tested at the speed of real days. An account's
``day_seconds`` sets how many real seconds its day lasts (86,400 by default;
20 in a test), and the control API can move its clock forward (``advance``) or
set it (``set_wall``), e.g. to a second before the portal's midnight. Only
daily windows read this clock: 10-second and per-second windows, latency and
token lifetimes stay on real time.
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

DAY_S = 86_400.0


def zone(name: str) -> ZoneInfo:
    """The IANA time zone ``name``; a ValueError names a zone it does not know."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(
            f"time_zone {name!r} is not an IANA time zone such as UTC or America/New_York"
        ) from None


class AccountClock:
    """Maps the server's monotonic time to the account's wall time (epoch seconds)."""

    __slots__ = ("mono0", "offset", "speed", "wall0")

    def __init__(self, day_seconds: float = DAY_S, *, mono: float | None = None) -> None:
        if not day_seconds > 0:
            raise ValueError("day_seconds must be a positive number of seconds")
        self.speed = DAY_S / day_seconds
        self.mono0 = time.monotonic() if mono is None else mono
        self.wall0 = time.time()
        self.offset = 0.0

    def wall(self, mono: float) -> float:
        """The account's wall time at monotonic time ``mono``."""
        return self.wall0 + self.offset + (mono - self.mono0) * self.speed

    def real(self, account_seconds: float) -> float:
        """How many real seconds ``account_seconds`` of the account's time take."""
        return account_seconds / self.speed

    def advance(self, seconds: float) -> None:
        """Move the clock forward (windows see time pass; it never goes back)."""
        if seconds < 0:
            raise ValueError("advance_seconds must not be negative (the clock never goes back)")
        self.offset += seconds

    def set_wall(self, wall: float, mono: float) -> None:
        """Make the account's wall time ``wall`` now; only forward."""
        self.advance(wall - self.wall(mono))


class LocalDays:
    """Day boundaries at midnight in one time zone, cached until the next one."""

    __slots__ = ("next_midnight", "start", "tz")

    def __init__(self, tz: ZoneInfo) -> None:
        self.tz = tz
        self.start = 0.0  # the current day's midnight (epoch seconds)
        self.next_midnight = -1.0

    def roll(self, wall: float) -> bool:
        """Move to the day holding ``wall``; True when that is a new day."""
        if self.start <= wall < self.next_midnight:
            return False
        local = datetime.fromtimestamp(wall, self.tz)
        midnight = local.replace(hour=0, minute=0, second=0, microsecond=0)
        # Add a calendar day in local terms (a DST day lasts 23 or 25 hours).
        following = (midnight + timedelta(days=1)).replace(tzinfo=None)
        self.start = midnight.timestamp()
        self.next_midnight = following.replace(tzinfo=self.tz).timestamp()
        return True

    def label(self) -> str:
        return datetime.fromtimestamp(self.start, self.tz).date().isoformat()
