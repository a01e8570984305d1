"""Which accounts a mock CRM process serves, and the named scenarios."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from crmsync_lab.mock.limits import Window, parse_limit

CRMS = {"salesforce": "sf", "hubspot": "hs"}
PREFIXES = {v: k for k, v in CRMS.items()}
# The daily quotas the mock reports (and enforces) unless told otherwise.
DAILY = {"salesforce": 5_000_000, "hubspot": 1_000_000}


@dataclass(frozen=True)
class AccountSpec:
    crm: str  # "salesforce" | "hubspot"
    name: str
    token: str | None = None  # default: token-<name>
    limits: tuple[Window, ...] = (Window(100, 1000),)
    daily_limit: int | None = None  # default: DAILY[crm]; 0 = none

    @property
    def bearer(self) -> str:
        return self.token or f"token-{self.name}"

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> AccountSpec:
        """``{crm, account, token?, limit?, window_ms?, limits?, daily_limit?}``.

        ``limit`` is a count (with ``window_ms``) or a spec like ``"100/s"``;
        ``limits`` a list of ``{limit, window_ms}``.
        """
        crm = str(data.get("crm", ""))
        crm = PREFIXES.get(crm, crm)
        if crm not in CRMS:
            raise ValueError("crm must be salesforce or hubspot")
        name = str(data.get("account") or data.get("name") or "")
        if not name or "/" in name:
            raise ValueError("account must be a non-empty name without '/'")
        if "limits" in data:
            limits = tuple(Window(int(w["limit"]), int(w["window_ms"])) for w in data["limits"])
        elif isinstance(data.get("limit"), str):
            limits = (parse_limit(data["limit"]),)
        else:
            limits = (Window(int(data.get("limit", 0)), int(data.get("window_ms", 1000))),)
        daily = data.get("daily_limit")
        return cls(crm, name, data.get("token"), limits, None if daily is None else int(daily))


@dataclass
class MockConfig:
    accounts: list[AccountSpec] = field(default_factory=list)
    latency_ms: float = 2.0
    jitter_ms: float = 1.0
    faults: dict[str, Any] = field(default_factory=dict)  # applied to every account at start
    seed: int | None = None


def accounts(crm: str, count: int, limit: Window, *, start: int = 1) -> list[AccountSpec]:
    """``count`` accounts named ``sf-01``, ``sf-02``... (or ``hs-``)."""
    prefix = CRMS[crm]
    return [
        AccountSpec(crm, f"{prefix}-{i:02d}", None, (limit,)) for i in range(start, start + count)
    ]


SF_SEED = Window(100, 1000)
HS_SEED = Window(50, 1000)


def scenario(name: str) -> list[AccountSpec]:
    """``seed``: 25 Salesforce accounts at 100/s and 25 HubSpot at 50/s;
    ``demo``: 2 of each at the same limits; ``none``: no accounts."""
    if name == "seed":
        return accounts("salesforce", 25, SF_SEED) + accounts("hubspot", 25, HS_SEED)
    if name == "demo":
        return accounts("salesforce", 2, SF_SEED) + accounts("hubspot", 2, HS_SEED)
    if name == "none":
        return []
    raise ValueError(f"unknown mock scenario {name!r}; use seed, demo or none")
