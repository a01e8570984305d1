"""The mock CRM server: many Salesforce orgs and HubSpot portals in one process.

Accounts live under a path prefix: ``http://host:port/sf/<account>/services/...``
and ``http://host:port/hs/<account>/crm/v3/...`` (so a connection's base URL
is ``http://host:port/sf/acme``). Each request is counted at arrival against
the account's sliding windows and answered as the real CRM would: Salesforce
403 REQUEST_LIMIT_EXCEEDED, HubSpot 429 with ``policyName`` and
``X-HubSpot-RateLimit-*`` headers. Latency, faults and inspection are per
account; ``/_control/*`` drives it all at run time (see ``control.py``).
The request path is kept lean (a plain asyncio HTTP protocol, see http.py; one
dict lookup per request; orjson) so one process serves over 8,000 requests/s.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections import Counter
from typing import Any

import orjson

from crmsync_lab.mock import control
from crmsync_lab.mock.common import Answer
from crmsync_lab.mock.config import CRMS, DAILY, AccountSpec, MockConfig
from crmsync_lab.mock.faults import Faults
from crmsync_lab.mock.http import Finish, Request, response, serve
from crmsync_lab.mock.hubspot import HubSpotPortal
from crmsync_lab.mock.hubspot import error as hs_error
from crmsync_lab.mock.limits import DAY_MS, AccountLimits, Refusal
from crmsync_lab.mock.loopwatch import LoopWatch
from crmsync_lab.mock.salesforce import SalesforceOrg
from crmsync_lab.mock.salesforce import error as sf_error

JSON = "application/json;charset=UTF-8"
SF_LIMIT = sf_error("REQUEST_LIMIT_EXCEEDED", "TotalRequests Limit exceeded.")
SF_AUTH = sf_error("INVALID_SESSION_ID", "Session expired or invalid")
HS_AUTH_MESSAGE = (
    "Authentication credentials not found. This API supports OAuth 2.0 authentication and you "
    "can find more details at https://developers.hubspot.com/docs/methods/auth/oauth-overview"
)


class Account:
    """One CRM account: its records, limits, faults and counters."""

    def __init__(self, spec: AccountSpec, index: int, faults: Faults, rng: random.Random) -> None:
        self.spec = spec
        self.crm = spec.crm
        self.salesforce = spec.crm == "salesforce"
        self.auth = f"Bearer {spec.bearer}"
        daily = DAILY[spec.crm] if spec.daily_limit is None else spec.daily_limit
        self.limits = AccountLimits(list(spec.limits), daily)
        self.api: SalesforceOrg | HubSpotPortal = (
            SalesforceOrg(spec.name, index)
            if self.salesforce
            else HubSpotPortal(spec.name, index, rng=rng)
        )
        self.faults = faults
        self.requests = 0
        self.by_status: Counter[int | str] = Counter()
        self.lost = 0
        self.storm = 0

    def quota_headers(self, now: float) -> dict[str, str]:
        lim = self.limits
        if self.salesforce:
            used = lim.day_count
            return {
                "Content-Type": JSON,
                "Sforce-Limit-Info": f"api-usage={used}/{lim.daily_limit}",
            }
        headers = {"Content-Type": JSON}
        if lim.daily_limit:
            headers["X-HubSpot-RateLimit-Daily"] = str(lim.daily_limit)
            headers["X-HubSpot-RateLimit-Daily-Remaining"] = str(
                max(0, lim.daily_limit - lim.day_count)
            )
        primary = lim.primary(now)
        if primary is not None:
            window, remaining = primary
            headers["X-HubSpot-RateLimit-Interval-Milliseconds"] = str(window.window_ms)
            headers["X-HubSpot-RateLimit-Max"] = str(window.limit)
            headers["X-HubSpot-RateLimit-Remaining"] = str(remaining)
        return headers

    def limit_answer(self, refusal: Refusal | None) -> tuple[Answer, dict[str, str]]:
        """The CRM's own rate-limit error (``refusal`` None: a storm)."""
        wait = 1.0 if refusal is None else refusal.retry_after
        if self.salesforce:
            return Answer(403, SF_LIMIT), {"Retry-After": str(max(1, math.ceil(wait)))}
        daily = refusal is not None and refusal.window.window_ms >= DAY_MS
        policy = "DAILY" if daily else "TEN_SECONDLY_ROLLING"
        body = hs_error(
            "RATE_LIMITS",
            f"You have reached your {policy.lower()} limit.",
            errorType="RATE_LIMIT",
            policyName=policy,
            groupName=f"publicapi:{self.spec.name}",
        )
        return Answer(429, body), {}

    def auth_answer(self) -> Answer:
        if self.salesforce:
            return Answer(401, SF_AUTH)
        return Answer(401, hs_error("INVALID_AUTHENTICATION", HS_AUTH_MESSAGE))

    def server_error(self, status: int) -> Answer:
        if self.salesforce:
            if status == 503:
                return Answer(503, sf_error("SERVER_UNAVAILABLE", "Server is unavailable"))
            msg = "An unexpected error occurred. Please include this ErrorId if you contact support"
            return Answer(status, sf_error("UNKNOWN_EXCEPTION", msg))
        category = "SERVICE_UNAVAILABLE" if status == 503 else "INTERNAL_ERROR"
        return Answer(status, hs_error(category, "The service is temporarily unavailable."))

    def bad_json(self) -> Answer:
        if self.salesforce:
            return Answer(400, sf_error("JSON_PARSER_ERROR", "The request body is not valid JSON"))
        return Answer(400, hs_error("VALIDATION_ERROR", "Invalid input JSON on line 1"))

    def stats(self) -> dict[str, Any]:
        lim = self.limits
        dups = self.api.duplicates()
        first = lim.windows[0] if lim.windows else None
        return {
            "crm": self.crm,
            "account": self.spec.name,
            "requests": self.requests,
            "by_status": {str(k): v for k, v in sorted(self.by_status.items(), key=str)},
            "violations": lim.violations,
            "violations_at": [round(t, 3) for t in lim.violations_at],
            "max_in_any_1s": lim.max_in_any_1s,
            "limit": first.limit if first else 0,
            "window_ms": first.window_ms if first else 0,
            "records": len(self.api.records),
            "duplicates": dups["external_id"] + dups["email"],
            "duplicates_by": dups,
            "lost_responses": self.lost,
            "storm_rejections": self.storm,
            **self.api.counts.view(),
        }

    def reset(self) -> None:
        self.api.reset()
        self.limits.reset_stats()
        self.requests = 0
        self.by_status.clear()
        self.lost = 0
        self.storm = 0


class MockCrm:
    """The aiohttp handler and the state of every account."""

    def __init__(self, config: MockConfig) -> None:
        self.config = config
        self.rng = random.Random(config.seed)
        self.defaults = Faults(latency_ms=config.latency_ms, jitter_ms=config.jitter_ms)
        if config.faults:
            self.defaults.apply(config.faults)
        self.accounts: dict[tuple[str, str], Account] = {}
        self.base = ""
        self.loop = LoopWatch()
        for spec in config.accounts:
            self.add_account(spec)

    # -- accounts, faults, inspection (also behind /_control) -------------
    def add_account(self, spec: AccountSpec) -> Account:
        index = len(self.accounts) + 1
        acct = Account(spec, index, self.defaults.copy(), self.rng)
        self.accounts[(CRMS[spec.crm], spec.name)] = acct
        return acct

    def account(self, crm: str, name: str) -> Account | None:
        return self.accounts.get((CRMS.get(crm, crm), name))

    def base_url(self, crm: str, name: str) -> str:
        return f"{self.base}/{CRMS.get(crm, crm)}/{name}"

    def select(self, name: str | None, crm: str | None) -> list[Account]:
        return [
            a
            for a in self.accounts.values()
            if (name in (None, "*", a.spec.name))
            and (crm is None or a.crm == crm or CRMS[a.crm] == crm)
        ]

    def set_faults(self, spec: dict[str, Any]) -> list[Account]:
        name, crm = spec.get("account", "*"), spec.get("crm")
        targets = self.select(name, crm)
        if name not in (None, "*") and not targets:
            raise KeyError(name)
        now = time.monotonic()
        if name in (None, "*") and crm is None:
            self.defaults.apply(spec, now)
        for acct in targets:
            acct.faults.apply(spec, now)
        return targets

    def stats(self) -> dict[str, Any]:
        per = {f"{a.crm}/{a.spec.name}": a.stats() for a in self.accounts.values()}
        totals = {
            "requests": sum(s["requests"] for s in per.values()),
            "violations": sum(s["violations"] for s in per.values()),
            "duplicates": sum(s["duplicates"] for s in per.values()),
            "records": sum(s["records"] for s in per.values()),
            "lost_responses": sum(s["lost_responses"] for s in per.values()),
            "max_in_any_1s": max((s["max_in_any_1s"] for s in per.values()), default=0),
        }
        # "now" and the times in "loop" and "violations_at" share one clock.
        loop = self.loop.stats()
        return {"accounts": per, "totals": totals, "loop": loop, "now": time.monotonic()}

    def reset(self, *, faults: bool = True) -> None:
        self.loop.reset()
        for acct in self.accounts.values():
            acct.reset()
            if faults:
                acct.faults.apply({"clear": True})

    # -- the request path -------------------------------------------------
    def begin(self, req: Request) -> tuple[float, Finish]:
        """Count the request at arrival; the answer is computed after the latency."""
        segs = req.segs
        if len(segs) > 2 and segs[1] == "_control":
            out = control.handle(self, req, segs[2:])
            return 0.0, lambda: out
        acct = self.accounts.get((segs[1], segs[2])) if len(segs) > 3 else None
        if acct is None:
            body = [{"message": f"no mock account at {req.path}", "errorCode": "NOT_FOUND"}]
            out = response(404, orjson.dumps(body), {"Content-Type": JSON})
            return 0.0, lambda: out
        now = time.monotonic()
        acct.requests += 1
        acct.limits.arrive(now)
        f = acct.faults
        extra: dict[str, str] = {}
        early: Answer | None = None
        if f.revoked or req.headers.get("authorization") != acct.auth:
            early = acct.auth_answer()
        elif now < f.outage_until:
            early = acct.server_error(503)
        elif now < f.storm_until:
            acct.storm += 1
            early, extra = acct.limit_answer(None)
        else:
            refusal = acct.limits.admit(now, time.time())
            if refusal is not None:
                early, extra = acct.limit_answer(refusal)
            elif f.error_rate and self.rng.random() < f.error_rate:
                early = acct.server_error(self.rng.choice((500, 503)))
        delay = f.latency_ms + f.slow_ms
        if f.jitter_ms:
            delay += self.rng.uniform(-f.jitter_ms, f.jitter_ms)
        lost = f.lost_rate > 0 and self.rng.random() < f.lost_rate

        def finish() -> bytes | None:
            answer = early or self._apply(acct, req)
            if lost and answer.wrote:
                # Lost response: the write is applied, the client never hears back.
                acct.lost += 1
                acct.by_status["lost"] += 1
                return None
            acct.by_status[answer.status] += 1
            headers = acct.quota_headers(time.monotonic())
            if extra:
                headers.update(extra)
            if answer.payload is None:
                del headers["Content-Type"]
                return response(answer.status, None, headers)
            return response(answer.status, orjson.dumps(answer.payload), headers)

        return delay / 1000.0, finish

    @staticmethod
    def _apply(acct: Account, req: Request) -> Answer:
        try:
            data: Any = orjson.loads(req.body) if req.body else None
        except orjson.JSONDecodeError:
            return acct.bad_json()
        return acct.api.handle(req.method, req.segs[3:], req.query, data)


class MockHandle:
    """A mock CRM running in this process (tests, the demo)."""

    def __init__(self, mock: MockCrm, server: asyncio.Server, url: str) -> None:
        self.mock = mock
        self.server = server
        self.url = url

    def base_url(self, crm: str, account: str) -> str:
        return self.mock.base_url(crm, account)

    def token(self, crm: str, account: str) -> str:
        acct = self.mock.account(crm, account)
        if acct is None:
            raise KeyError(f"{crm}/{account}")
        return acct.spec.bearer

    def add_account(self, spec: AccountSpec) -> None:
        self.mock.add_account(spec)

    def stats(self) -> dict[str, Any]:
        return self.mock.stats()

    def account_stats(self, crm: str, account: str) -> dict[str, Any]:
        return self.mock.stats()["accounts"][f"{crm}/{account}"]  # type: ignore[no-any-return]

    def records(self, crm: str, account: str) -> list[dict[str, Any]]:
        acct = self.mock.account(crm, account)
        if acct is None:
            raise KeyError(f"{crm}/{account}")
        return acct.api.view()

    def set_faults(self, account: str = "*", crm: str | None = None, **spec: Any) -> None:
        self.mock.set_faults({"account": account, "crm": crm, **spec})

    def reset(self, *, faults: bool = True) -> None:
        self.mock.reset(faults=faults)

    async def close(self) -> None:
        await self.mock.loop.stop()
        self.server.close()
        await self.server.wait_closed()


async def start_mock(
    config: MockConfig, *, host: str = "127.0.0.1", port: int = 0, backlog: int = 2048
) -> MockHandle:
    """Serve ``config``'s accounts on ``host:port`` (0 = any free port)."""
    mock = MockCrm(config)
    server = await serve(mock, host, port, backlog=backlog)
    bound = server.sockets[0].getsockname()
    url = f"http://{host}:{bound[1]}"
    mock.base = url
    mock.loop.start()
    return MockHandle(mock, server, url)


async def run_mock(
    config: MockConfig,
    *,
    host: str = "127.0.0.1",
    port: int = 9000,
    on_ready: Any = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Serve until ``stop`` is set (or the process is interrupted)."""
    handle = await start_mock(config, host=host, port=port)
    handle.mock.loop.freeze_survivors = True  # this process is the mock's alone
    try:
        if on_ready is not None:
            on_ready(handle)
        await (stop or asyncio.Event()).wait()
    finally:
        await handle.close()
