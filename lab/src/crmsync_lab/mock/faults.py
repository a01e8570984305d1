"""Fault injection for the mock CRMs: set at start or at run time.

A fault spec is a JSON object, applied as a partial update:
``error_rate`` (share of requests answered 5xx), ``outage_seconds`` (every
request 503 for N seconds), ``storm_seconds`` (every request answered with
the CRM's rate-limit error for N seconds), ``slow_ms`` (added latency),
``lost_rate`` (share of writes applied and then left unanswered: the
connection is dropped), ``revoke_token`` (401 for every request until
cleared), ``latency_ms`` / ``jitter_ms`` (base latency), ``clear`` (back to
no faults first).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(slots=True)
class Faults:
    latency_ms: float = 2.0
    jitter_ms: float = 1.0
    error_rate: float = 0.0
    lost_rate: float = 0.0
    slow_ms: float = 0.0
    outage_until: float = 0.0  # monotonic seconds
    storm_until: float = 0.0
    revoked: bool = False

    def copy(self) -> Faults:
        return Faults(
            self.latency_ms,
            self.jitter_ms,
            self.error_rate,
            self.lost_rate,
            self.slow_ms,
            self.outage_until,
            self.storm_until,
            self.revoked,
        )

    def apply(self, spec: Mapping[str, Any], now: float | None = None) -> None:
        """Apply a partial fault spec; raises ValueError naming a bad key."""
        t = time.monotonic() if now is None else now
        if spec.get("clear"):
            self.error_rate = self.lost_rate = self.slow_ms = 0.0
            self.outage_until = self.storm_until = 0.0
            self.revoked = False
        known = {
            "account",
            "crm",
            "clear",
            "latency_ms",
            "jitter_ms",
            "error_rate",
            "lost_rate",
            "slow_ms",
            "outage_seconds",
            "storm_seconds",
            "revoke_token",
        }
        unknown = set(spec) - known
        if unknown:
            raise ValueError(f"unknown fault setting(s): {', '.join(sorted(unknown))}")
        for key in ("error_rate", "lost_rate"):
            if key in spec:
                value = float(spec[key])
                if not 0.0 <= value <= 1.0:
                    raise ValueError(f"{key} must be between 0 and 1")
                setattr(self, key, value)
        for key in ("latency_ms", "jitter_ms", "slow_ms"):
            if key in spec:
                value = float(spec[key])
                if value < 0:
                    raise ValueError(f"{key} must not be negative")
                setattr(self, key, value)
        if "outage_seconds" in spec:
            self.outage_until = t + max(0.0, float(spec["outage_seconds"]))
        if "storm_seconds" in spec:
            self.storm_until = t + max(0.0, float(spec["storm_seconds"]))
        if "revoke_token" in spec:
            self.revoked = bool(spec["revoke_token"])

    def view(self, now: float | None = None) -> dict[str, Any]:
        t = time.monotonic() if now is None else now
        return {
            "latency_ms": self.latency_ms,
            "jitter_ms": self.jitter_ms,
            "error_rate": self.error_rate,
            "lost_rate": self.lost_rate,
            "slow_ms": self.slow_ms,
            "outage_remaining": round(max(0.0, self.outage_until - t), 3),
            "storm_remaining": round(max(0.0, self.storm_until - t), 3),
            "revoked": self.revoked,
        }
