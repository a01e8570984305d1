"""Which accounts a mock CRM process serves, and the named scenarios.

An account is described by an ``AccountSpec`` (also as JSON, for
``POST /_control/accounts``): its CRM and name, how clients authenticate
(a static bearer token, and/or OAuth with expiring access tokens), its limit
model (``windows``: sliding windows such as 100/s; ``crm``: the CRM's own, see
models.py) and what its schema holds (the external id field or property, and
Salesforce's duplicate rule).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from crmsync_lab.mock.clock import DAY_S, AccountClock, zone
from crmsync_lab.mock.limits import AccountLimits, Limits, Window, parse_limit
from crmsync_lab.mock.models import HubSpotLimits, SalesforceLimits, tier

CRMS = {"salesforce": "sf", "hubspot": "hs"}
PREFIXES = {v: k for k, v in CRMS.items()}
# The daily quotas the windows model reports (and enforces) unless told otherwise.
DAILY = {"salesforce": 5_000_000, "hubspot": 1_000_000}
# Salesforce's allocation under the crm model unless told otherwise (a small
# Enterprise org: 100,000 requests per rolling 24 hours).
SF_ALLOCATION = 100_000
MODELS = ("windows", "crm")
ID_FIELD = ("ok", "missing", "not-unique", "not-external-id")
DUPLICATE_RULES = ("allow", "block")
# Access tokens live this long unless told otherwise: HubSpot's 30 minutes,
# Salesforce's default session timeout of 2 hours.
TOKEN_LIFETIME = {"salesforce": 7200.0, "hubspot": 1800.0}


class UnknownAccount(LookupError):
    """A control request named an account the mock does not serve."""


@dataclass(frozen=True)
class OAuthSpec:
    """A connected app (Salesforce) or public app (HubSpot) installed in the account."""

    client_id: str
    client_secret: str
    refresh_token: str
    username: str = ""  # Salesforce JWT bearer: the ``sub`` it accepts
    certificate: str | None = None  # PEM certificate (or public key) for JWT bearer
    token_lifetime: float = 0.0  # seconds; 0 = the CRM's default

    @classmethod
    def default(cls, crm: str, name: str, **overrides: Any) -> OAuthSpec:
        base = cls(
            client_id=f"client-{name}",
            client_secret=f"secret-{name}",
            refresh_token=f"refresh-{name}",
            username=f"integration@{name}.example.com" if crm == "salesforce" else "",
        )
        return replace(base, **overrides)


@dataclass(frozen=True)
class AccountSpec:
    crm: str  # "salesforce" | "hubspot"
    name: str
    token: str | None = None  # default: token-<name>
    limits: tuple[Window, ...] = (Window(100, 1000),)
    daily_limit: int | None = None  # default: DAILY[crm] (crm model: its own); 0 = none
    model: str = "windows"  # or "crm"
    tier: str = "professional"  # HubSpot under the crm model: 100, 190, 250 or a name
    time_zone: str = "UTC"  # HubSpot's daily reset: midnight here
    day_seconds: float = DAY_S  # how long the account's day lasts (clock.py)
    concurrency: int = 25  # Salesforce: long-running requests at once
    long_running_ms: int = 20_000
    search_per_second: int = 5  # HubSpot's search API
    oauth: OAuthSpec | None = None
    static_token: bool = True  # the bearer token works beside OAuth's
    id_field: str = "ok"  # the external id field/property: ok, missing, not-unique, ...
    duplicate_rule: str = "allow"  # Salesforce: block creating a contact with a taken email
    seed: tuple[dict[str, Any], ...] = field(default=(), compare=False)

    @property
    def bearer(self) -> str:
        return self.token or f"token-{self.name}"

    @property
    def token_lifetime(self) -> float:
        life = self.oauth.token_lifetime if self.oauth else 0.0
        return life or TOKEN_LIFETIME[self.crm]

    def clock(self) -> AccountClock:
        return AccountClock(self.day_seconds)

    def make_limits(self, clock: AccountClock) -> Limits:
        """The account's limit model, enforcing what this spec says."""
        if self.model == "windows":
            daily = DAILY[self.crm] if self.daily_limit is None else self.daily_limit
            return AccountLimits(list(self.limits), daily)
        if self.crm == "salesforce":
            return SalesforceLimits(
                self.daily_limit or SF_ALLOCATION,
                clock,
                concurrency=self.concurrency,
                long_running_ms=self.long_running_ms,
            )
        burst, daily = tier(self.tier)
        return HubSpotLimits(
            burst,
            self.daily_limit or daily,
            clock,
            time_zone=self.time_zone,
            search_per_second=self.search_per_second,
        )

    def check(self) -> AccountSpec:
        """Itself, or a ValueError naming the first setting that cannot work."""
        if self.model not in MODELS:
            raise ValueError(f"model must be one of {', '.join(MODELS)}, not {self.model!r}")
        if self.id_field not in ID_FIELD:
            raise ValueError(f"id_field must be one of {', '.join(ID_FIELD)}")
        if self.id_field == "not-external-id" and self.crm != "salesforce":
            raise ValueError("id_field not-external-id applies to Salesforce only")
        if self.duplicate_rule not in DUPLICATE_RULES:
            raise ValueError(f"duplicate_rule must be one of {', '.join(DUPLICATE_RULES)}")
        if not self.static_token and self.oauth is None:
            raise ValueError("static_token false needs oauth: clients could not authenticate")
        if self.oauth is not None and self.oauth.token_lifetime < 0:
            raise ValueError("token_lifetime must not be negative")
        zone(self.time_zone)
        self.make_limits(self.clock())  # the model's own checks
        return self

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> AccountSpec:
        """``{crm, account, token?, limit?, window_ms?, limits?, daily_limit?, model?,
        tier?, time_zone?, day_seconds?, concurrency?, long_running_ms?,
        search_per_second?, oauth?, static_token?, id_field?, duplicate_rule?}``.

        ``limit`` is a count (with ``window_ms``) or a spec like ``"100/s"``;
        ``limits`` a list of ``{limit, window_ms}``; ``oauth`` is ``true`` (the
        default app: client-<name>, secret-<name>, refresh-<name>) or an object
        overriding ``client_id``, ``client_secret``, ``refresh_token``,
        ``username``, ``certificate`` (PEM) and ``token_lifetime`` (seconds).
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
        extra: dict[str, Any] = {}
        for key, kind in _SCALARS.items():
            if key in data:
                value = data[key]
                if kind is bool and not isinstance(value, bool):
                    raise ValueError(f"{key} must be true or false")
                try:
                    extra[key] = kind(value)
                except (TypeError, ValueError):
                    raise ValueError(f"{key} must be a {kind.__name__}") from None
        oauth = data.get("oauth")
        if oauth is True or isinstance(oauth, dict):
            extra["oauth"] = _oauth(crm, name, oauth if isinstance(oauth, dict) else {})
        elif oauth not in (None, False):
            raise ValueError("oauth must be true, false or an object")
        token = data.get("token")
        spec = cls(crm, name, token, limits, None if daily is None else int(daily), **extra)
        return spec.check()


_SCALARS: dict[str, type] = {
    "model": str,
    "tier": str,
    "time_zone": str,
    "day_seconds": float,
    "concurrency": int,
    "long_running_ms": int,
    "search_per_second": int,
    "static_token": bool,
    "id_field": str,
    "duplicate_rule": str,
}
_OAUTH_KEYS = ("client_id", "client_secret", "refresh_token", "username", "certificate")


def _oauth(crm: str, name: str, data: dict[str, Any]) -> OAuthSpec:
    unknown = set(data) - {*_OAUTH_KEYS, "token_lifetime"}
    if unknown:
        raise ValueError(f"unknown oauth setting(s): {', '.join(sorted(unknown))}")
    overrides: dict[str, Any] = {k: str(data[k]) for k in _OAUTH_KEYS if data.get(k)}
    if "token_lifetime" in data:
        try:
            overrides["token_lifetime"] = float(data["token_lifetime"])
        except (TypeError, ValueError):
            raise ValueError("oauth token_lifetime must be a number of seconds") from None
    return OAuthSpec.default(crm, name, **overrides)


@dataclass
class MockConfig:
    accounts: list[AccountSpec] = field(default_factory=list)
    latency_ms: float = 2.0
    jitter_ms: float = 1.0
    faults: dict[str, Any] = field(default_factory=dict)  # applied to every account at start
    seed: int | None = None
    tls: Any = None  # tls.TlsFiles: Salesforce orgs also get an https instance port each


def accounts(crm: str, count: int, limit: Window, *, start: int = 1) -> list[AccountSpec]:
    """``count`` accounts named ``sf-01``, ``sf-02``... (or ``hs-``)."""
    prefix = CRMS[crm]
    return [
        AccountSpec(crm, f"{prefix}-{i:02d}", None, (limit,)) for i in range(start, start + count)
    ]


SF_SEED = Window(100, 1000)
HS_SEED = Window(50, 1000)
# The demo's access tokens expire during a run: refreshes are part of what it shows.
DEMO_TOKEN_LIFETIME = 30.0


def scenario(name: str) -> list[AccountSpec]:
    """``seed``: 25 Salesforce accounts at 100/s and 25 HubSpot at 50/s;
    ``demo``: 2 of each at the same limits, each also with an OAuth app whose
    access tokens live 30 s (the static tokens keep working); ``none``: no accounts."""
    if name == "seed":
        return accounts("salesforce", 25, SF_SEED) + accounts("hubspot", 25, HS_SEED)
    if name == "demo":
        specs = accounts("salesforce", 2, SF_SEED) + accounts("hubspot", 2, HS_SEED)
        return [
            replace(s, oauth=OAuthSpec.default(s.crm, s.name, token_lifetime=DEMO_TOKEN_LIFETIME))
            for s in specs
        ]
    if name == "none":
        return []
    raise ValueError(f"unknown mock scenario {name!r}; use seed, demo or none")
