"""The mock CRM server: many Salesforce orgs and HubSpot portals in one process.

Accounts live under a path prefix: ``http://host:port/sf/<account>/services/...``
and ``http://host:port/hs/<account>/crm/v3/...`` (so a connection's base URL
is ``http://host:port/sf/acme``). With TLS (``MockConfig.tls``) each
Salesforce org also gets an https port of its own, its instance URL
(``https://127.0.0.1:<port>``, no path: what simple-salesforce accepts).
Token endpoints: ``/services/oauth2/token`` and ``/oauth/v1/token`` at the
root, under an account's prefix, or on an instance port (oauth.py).

Each request is authenticated (auth.py), then counted at arrival against the
account's limit model (limits.py, models.py) and answered as the real CRM
would: Salesforce 403 REQUEST_LIMIT_EXCEEDED, HubSpot 429 with ``policyName``,
quota headers on every answer. Latency, faults, clocks and inspection are per
account; ``/_control/*`` drives it all at run time (see ``control.py``). The
request path is kept lean (a plain asyncio HTTP protocol, see http.py; one
dict lookup per request; orjson) so one process serves over 8,000 requests/s.
"""

from __future__ import annotations

import asyncio
import math
import random
import socket
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

import orjson

from crmsync_lab.mock import control, oauth, seeding
from crmsync_lab.mock.auth import Credentials, Denial
from crmsync_lab.mock.common import Answer
from crmsync_lab.mock.config import CRMS, AccountSpec, MockConfig, UnknownAccount
from crmsync_lab.mock.faults import Faults
from crmsync_lab.mock.http import Finish, Request, response, serve
from crmsync_lab.mock.hubspot import HubSpotPortal
from crmsync_lab.mock.hubspot import error as hs_error
from crmsync_lab.mock.hubspot_rest import HubSpotApi, is_search
from crmsync_lab.mock.limits import CONCURRENT, Refusal
from crmsync_lab.mock.loopwatch import LoopWatch
from crmsync_lab.mock.salesforce import SalesforceOrg
from crmsync_lab.mock.salesforce import error as sf_error
from crmsync_lab.mock.salesforce_rest import SalesforceApi, free, versions

JSON = "application/json;charset=UTF-8"
SF_LIMIT = sf_error("REQUEST_LIMIT_EXCEEDED", "TotalRequests Limit exceeded.")
SF_CONCURRENT = sf_error(
    "REQUEST_LIMIT_EXCEEDED", "ConcurrentRequests (Concurrent API Requests) Limit exceeded."
)
SF_AUTH = sf_error("INVALID_SESSION_ID", "Session expired or invalid")
HS_AUTH_MESSAGE = (
    "Authentication credentials not found. This API supports OAuth 2.0 authentication and you "
    "can find more details at https://developers.hubspot.com/docs/methods/auth/oauth-overview"
)
SF_TOKEN = ["services", "oauth2", "token"]
HS_TOKEN = ["oauth", "v1", "token"]
# Real audiences a Salesforce JWT may name besides the mock's own URLs.
SF_LOGIN_URLS = ("https://login.salesforce.com", "https://test.salesforce.com")


class Account:
    """One CRM account: its records, credentials, limits, clock, faults and counters."""

    def __init__(self, spec: AccountSpec, index: int, faults: Faults, rng: random.Random) -> None:
        self.spec = spec
        self.crm = spec.crm
        self.salesforce = spec.crm == "salesforce"
        self.org_id = f"00D{index:012d}AAA"
        self.user_id = f"005{index:012d}AAA"
        self.clock = spec.clock()
        self.limits = spec.make_limits(self.clock)
        self.crm_model = spec.model == "crm"
        self.creds = Credentials(spec, f"{self.org_id}!" if self.salesforce else "CN")
        self.store: SalesforceOrg | HubSpotPortal
        self.rest: SalesforceApi | HubSpotApi
        if self.salesforce:
            org = SalesforceOrg(
                spec.name, index, id_field=spec.id_field, duplicate_rule=spec.duplicate_rule
            )
            org.usage = self.usage
            self.store, self.rest = org, SalesforceApi(org)
        else:
            portal = HubSpotPortal(spec.name, index, rng=rng, id_field=spec.id_field)
            self.store, self.rest = portal, HubSpotApi(portal)
        self.instance_url = ""  # https per-org URL, when the mock has TLS
        self.faults = faults
        self.requests = 0
        self.token_requests = 0
        self.by_status: Counter[int | str] = Counter()
        self.lost = 0
        self.storm = 0
        if spec.seed:
            self.seed(spec.seed)

    def usage(self) -> tuple[int, int]:
        now = time.monotonic()
        return self.limits.daily(now, self.clock.wall(now))

    def seed(self, rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
        """Load contacts that exist before crmsync (seeding.py); what was refused, why."""
        ids: list[str] = []
        refused: list[dict[str, Any]] = []
        for i, row in enumerate(rows):
            record_id, why = self.store.seed(seeding.native(self.crm, row))
            if record_id is None:
                refused.append({"index": i, "reason": why})
            else:
                ids.append(record_id)
        return {"created": len(ids), "ids": ids, "refused": refused}

    def quota_headers(self, now: float) -> dict[str, str]:
        headers = {"Content-Type": JSON}
        headers.update(self.limits.headers(now, self.clock.wall(now), self.salesforce))
        return headers

    def limit_answer(self, refusal: Refusal | None) -> tuple[Answer, dict[str, str]]:
        """The CRM's own rate-limit error (``refusal`` None: a storm)."""
        policy = refusal.policy if refusal is not None else "TEN_SECONDLY_ROLLING"
        if self.salesforce:
            body = SF_CONCURRENT if policy == CONCURRENT else SF_LIMIT
            if self.crm_model:
                return Answer(403, body), {}  # Salesforce sends no Retry-After
            wait = 1.0 if refusal is None else refusal.retry_after
            return Answer(403, body), {"Retry-After": str(max(1, math.ceil(wait)))}
        body_hs = hs_error(
            "RATE_LIMITS",
            f"You have reached your {policy.lower()} limit.",
            errorType="RATE_LIMIT",
            policyName=policy,
            groupName=f"publicapi:{self.spec.name}",
        )
        return Answer(429, body_hs), {}

    def auth_answer(self, denial: Denial | None = None) -> Answer:
        if self.salesforce:
            return Answer(401, SF_AUTH)
        if denial is not None and denial.reason == "expired":
            ago = max(1, math.ceil(denial.expired_for))
            msg = f"The OAuth token used to make this call expired {ago} second(s) ago."
            return Answer(401, hs_error("EXPIRED_AUTHENTICATION", msg))
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
        dups = self.store.duplicates()
        windows = lim.windows_view()
        first = windows[0] if windows else None
        used, most = self.usage()
        return {
            "crm": self.crm,
            "account": self.spec.name,
            "model": lim.model,
            "requests": self.requests,
            "token_requests": self.token_requests,
            "by_status": {str(k): v for k, v in sorted(self.by_status.items(), key=str)},
            "violations": lim.violations,
            "violations_by": dict(lim.violations_by),
            "violations_at": [round(t, 3) for t in lim.violations_at],
            "max_in_any_1s": lim.max_in_any_1s,
            "limit": first.limit if first else 0,
            "window_ms": first.window_ms if first else 0,
            "daily": {"used": used, "max": most},
            "records": len(self.store.records),
            "duplicates": dups["external_id"] + dups["email"],
            "duplicates_by": dups,
            "lost_responses": self.lost,
            "storm_rejections": self.storm,
            "auth": self.creds.view(),
            **self.store.counts.view(),
        }

    def reset(self) -> None:
        self.store.reset()
        self.limits.reset_stats()
        self.creds.reset()
        self.requests = 0
        self.token_requests = 0
        self.by_status.clear()
        self.lost = 0
        self.storm = 0


class Instance:
    """The app behind one org's https port: its paths are the org's, without a prefix."""

    def __init__(self, mock: MockCrm, acct: Account) -> None:
        self.mock = mock
        self.prefix = ["", CRMS[acct.crm], acct.spec.name]
        self.origin = acct.instance_url

    def begin(self, req: Request) -> tuple[float, Finish]:
        req.segs = [*self.prefix, *req.segs[1:]]
        req.origin = self.origin
        return self.mock.begin(req)


class MockCrm:
    """The request handler and the state of every account."""

    def __init__(self, config: MockConfig) -> None:
        self.config = config
        self.rng = random.Random(config.seed)
        self.defaults = Faults(latency_ms=config.latency_ms, jitter_ms=config.jitter_ms)
        if config.faults:
            self.defaults.apply(config.faults)
        self.accounts: dict[tuple[str, str], Account] = {}
        self.base = ""
        self.loop = LoopWatch()
        self.ssl = config.tls.context() if config.tls is not None else None
        self.instance_host = ""  # set once the main port listens
        self.instance_servers: list[asyncio.Server] = []
        self._opening: set[asyncio.Task[None]] = set()
        for spec in config.accounts:
            self.add_account(spec)

    # -- accounts, faults, inspection (also behind /_control) -------------
    def add_account(self, spec: AccountSpec) -> Account:
        index = len(self.accounts) + 1
        acct = Account(spec, index, self.defaults.copy(), self.rng)
        self.accounts[(CRMS[spec.crm], spec.name)] = acct  # a new one with the name replaces
        if self.instance_host:
            self._open_instance(acct)
        return acct

    def _open_instance(self, acct: Account) -> None:
        """Give a Salesforce org its https port (bound now; served from the loop)."""
        if not acct.salesforce or self.ssl is None:
            return
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.instance_host, 0))
        sock.listen(128)  # connections wait in the backlog until the loop serves the port
        sock.setblocking(False)
        acct.instance_url = f"https://{self.instance_host}:{sock.getsockname()[1]}"
        task = asyncio.get_running_loop().create_task(self._serve_instance(acct, sock))
        self._opening.add(task)
        task.add_done_callback(self._opening.discard)

    async def _serve_instance(self, acct: Account, sock: socket.socket) -> None:
        server = await serve(Instance(self, acct), sock=sock, ssl=self.ssl)
        self.instance_servers.append(server)

    async def open_instances(self, host: str) -> None:
        """Once the main port listens: an https port per Salesforce org (with TLS)."""
        self.instance_host = "127.0.0.1" if host in ("0.0.0.0", "", "localhost") else host
        for acct in self.accounts.values():
            self._open_instance(acct)
        if self._opening:
            await asyncio.gather(*self._opening)

    async def close_instances(self) -> None:
        for task in list(self._opening):
            task.cancel()
        for server in self.instance_servers:
            server.close()
            await server.wait_closed()

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

    def targets(self, spec: dict[str, Any]) -> list[Account]:
        """The accounts a control request names (``account``: a name or ``*``;
        ``crm`` optional); UnknownAccount when a named account does not exist."""
        name, crm = spec.get("account", "*"), spec.get("crm")
        found = self.select(name, crm)
        if name not in (None, "*") and not found:
            raise UnknownAccount(name)
        return found

    def set_faults(self, spec: dict[str, Any]) -> list[Account]:
        targets = self.targets(spec)
        name, crm = spec.get("account", "*"), spec.get("crm")
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

    # -- token endpoints -----------------------------------------------------
    def _token(self, req: Request, crm: str, acct: Account | None) -> bytes:
        """A token request at the root (``acct`` None) or for one account."""
        fields = oauth.form(req.body, req.query)
        now = time.monotonic()
        pool = [acct] if acct is not None else [a for a in self.accounts.values() if a.crm == crm]
        if req.method != "POST":
            why = {"error": "invalid_request", "error_description": "must use HTTP POST"}
            answer, holder = Answer(405, why), None
        elif crm == "salesforce":
            login = req.origin or (self.base_url(crm, acct.spec.name) if acct else self.base)

            def instance_url(a: oauth.Holder) -> str:
                assert isinstance(a, Account)
                if req.origin:
                    return req.origin
                if acct is None and a.instance_url:
                    return a.instance_url
                return self.base_url("salesforce", a.spec.name)

            def audiences(a: oauth.Holder) -> set[str]:
                assert isinstance(a, Account)
                own = {login, self.base, a.instance_url, self.base_url("salesforce", a.spec.name)}
                return {u for u in (*own, *SF_LOGIN_URLS) if u}

            answer, holder = oauth.salesforce(
                fields,
                pool,
                now=now,
                login_url=login,
                audiences=audiences,
                instance_url=instance_url,
            )
        else:
            answer, holder = oauth.hubspot(fields, pool, now=now)
        counted = acct or holder
        if isinstance(counted, Account):
            counted.token_requests += 1
        body = orjson.dumps(answer.payload)
        headers = {"Content-Type": JSON, "Cache-Control": "no-store"}
        return response(answer.status, body, headers)

    # -- the request path -------------------------------------------------
    def begin(self, req: Request) -> tuple[float, Finish]:
        """Count the request at arrival; the answer is computed after the latency."""
        segs = req.segs
        if len(segs) > 2 and segs[1] == "_control":
            out = control.handle(self, req, segs[2:])
            return 0.0, lambda: out
        if segs[1:] == SF_TOKEN:
            out = self._token(req, "salesforce", None)
            return self.config.latency_ms / 1000.0, lambda: out
        if segs[1:] == HS_TOKEN:
            out = self._token(req, "hubspot", None)
            return self.config.latency_ms / 1000.0, lambda: out
        acct = self.accounts.get((segs[1], segs[2])) if len(segs) > 3 else None
        if acct is None:
            body = [{"message": f"no mock account at {req.path}", "errorCode": "NOT_FOUND"}]
            out = response(404, orjson.dumps(body), {"Content-Type": JSON})
            return 0.0, lambda: out
        rest = segs[3:]
        if rest == (SF_TOKEN if acct.salesforce else HS_TOKEN):
            out = self._token(req, acct.crm, acct)
            return acct.faults.latency_ms / 1000.0, lambda: out
        if acct.salesforce and rest in (["services", "data"], ["services", "data", ""]):
            # The version list needs no session, and costs no API request.
            out = response(200, orjson.dumps(versions()), {"Content-Type": JSON})
            return acct.faults.latency_ms / 1000.0, lambda: out
        now = time.monotonic()
        acct.requests += 1
        acct.limits.arrive(now)
        f = acct.faults
        extra: dict[str, str] = {}
        early: Answer | None = None
        denial = None if f.revoked else acct.creds.check(req.headers.get("authorization"), now)
        admitted = False
        if f.revoked or denial is not None:
            early = acct.auth_answer(denial)
        elif now < f.outage_until:
            early = acct.server_error(503)
        elif now < f.storm_until:
            acct.storm += 1
            early, extra = acct.limit_answer(None)
        elif acct.salesforce and free(req.method, rest):
            pass
        else:
            search = not acct.salesforce and is_search(req.method, rest)
            refusal = acct.limits.admit(now, acct.clock.wall(now), search)
            if refusal is not None:
                early, extra = acct.limit_answer(refusal)
            elif f.error_rate and self.rng.random() < f.error_rate:
                early = acct.server_error(self.rng.choice((500, 503)))
            else:
                admitted = True
        delay = f.latency_ms + f.slow_ms
        if f.jitter_ms:
            delay += self.rng.uniform(-f.jitter_ms, f.jitter_ms)
        if admitted:
            acct.limits.started(now, delay / 1000.0)
        lost = f.lost_rate > 0 and self.rng.random() < f.lost_rate

        def finish() -> bytes | None:
            answer = early or self._apply(acct, req, rest)
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
    def _apply(acct: Account, req: Request, rest: list[str]) -> Answer:
        try:
            data: Any = orjson.loads(req.body) if req.body else None
        except orjson.JSONDecodeError:
            return acct.bad_json()
        if isinstance(acct.rest, SalesforceApi):
            return acct.rest.handle(req.method, rest, req.query, data, req.headers)
        return acct.rest.handle(req.method, rest, req.query, data)


class MockHandle:
    """A mock CRM running in this process (tests, the demo)."""

    def __init__(self, mock: MockCrm, server: asyncio.Server, url: str) -> None:
        self.mock = mock
        self.server = server
        self.url = url

    def base_url(self, crm: str, account: str) -> str:
        return self.mock.base_url(crm, account)

    def instance_url(self, account: str) -> str:
        """A Salesforce org's https instance URL (the mock needs TLS)."""
        acct = self.mock.account("salesforce", account)
        if acct is None or not acct.instance_url:
            raise KeyError(f"salesforce/{account} has no instance URL (start the mock with TLS)")
        return acct.instance_url

    def account(self, crm: str, account: str) -> Account:
        acct = self.mock.account(crm, account)
        if acct is None:
            raise KeyError(f"{crm}/{account}")
        return acct

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
        return self.account(crm, account).store.view()

    def set_faults(self, account: str = "*", crm: str | None = None, **spec: Any) -> None:
        self.mock.set_faults({"account": account, "crm": crm, **spec})

    def reset(self, *, faults: bool = True) -> None:
        self.mock.reset(faults=faults)

    async def close(self) -> None:
        await self.mock.close_instances()
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
    await mock.open_instances(host)
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
