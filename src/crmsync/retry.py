"""RetryHandler policy: exponential backoff with full jitter, a fixed attempt budget.

Full jitter (``random() * min(cap, base * 2**(attempt-1))``, from the AWS
Architecture Blog "Exponential Backoff And Jitter") spreads the retries of many
workers hitting one recovering CRM instead of synchronising them. Only sends
that reached the CRM and failed count as attempts: waiting for the rate
limiter, a 429's ``Retry-After`` or an open circuit never does (the worker
releases those ids instead of calling ``delay``).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from crmsync.settings import Settings


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    attempts: int = 3
    base: float = 1.0
    cap: float = 60.0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError("retry attempts must be at least 1 (CRMSYNC_RETRY_ATTEMPTS)")
        if self.base <= 0 or self.cap <= 0:
            raise ValueError(
                "retry base and cap must be above zero "
                "(CRMSYNC_RETRY_BASE_SECONDS, CRMSYNC_RETRY_CAP_SECONDS)"
            )

    @classmethod
    def from_settings(cls, settings: Settings) -> RetryPolicy:
        return cls(
            attempts=settings.retry_attempts,
            base=settings.retry_base_seconds,
            cap=settings.retry_cap_seconds,
        )

    def ceiling(self, attempt: int) -> float:
        """The largest delay after failed attempt number ``attempt`` (1-based)."""
        if attempt < 1:
            raise ValueError(f"attempt numbers start at 1, got {attempt}")
        # Clamp the exponent: 2**1100 overflows a float long before the cap matters.
        return min(self.cap, self.base * 2.0 ** min(attempt - 1, 1000))

    def delay(self, attempt: int, rand: Callable[[], float] = random.random) -> float:
        """Seconds to wait after failed attempt ``attempt`` before the next one."""
        return rand() * self.ceiling(attempt)

    def exhausted(self, attempts_done: int) -> bool:
        """True when no attempt is left: the record goes to the dead letters."""
        return attempts_done >= self.attempts
