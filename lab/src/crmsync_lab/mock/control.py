"""The mock's control endpoints, under ``/_control/``.

``GET  health``                      -> ``{"ok": true}``
``GET  accounts``                    -> every account with base URL, token, limits, model,
                                        OAuth app, instance URL
``POST accounts``                    ``{crm, account, token?, limit?, model?, oauth?, ...}``
                                        (config.py ``AccountSpec.from_json``)
``GET  faults`` / ``POST faults``    ``{"account": "<name>|*", "crm"?, ...}`` (faults.py)
``POST tokens``                      ``{"account", "crm"?, "revoke"?: "access"|"all",
                                        "token_lifetime"?: s, "refresh_token"?: t}`` (auth.py)
``POST clock``                       ``{"account", "crm"?, "advance_seconds"? | "wall"?}``:
                                        move accounts' clocks forward (clock.py)
``POST usage``                       ``{"account", "crm"?, "requests": N}``: other apps of the
                                        org/portal spend N requests of its daily budget now
``POST seed``                        ``{"account", "crm"?, "contacts"|"records": [...]}``:
                                        load contacts that exist before crmsync (seeding.py)
``GET  stats``                       -> per account: requests, by_status, violations(_by),
                                        max_in_any_1s, daily, auth, records, duplicates, ...
``GET  records/<crm>/<account>``     -> the account's current records
``POST reset``                       ``{"faults": true}``: forget records, counters (and faults)

``account`` is a name or ``*`` (every account, of ``crm`` if given); a named
account that does not exist is 404, a bad setting 400 with one sentence.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import orjson

from crmsync_lab.mock.config import AccountSpec, UnknownAccount
from crmsync_lab.mock.http import Request, response

if TYPE_CHECKING:
    from crmsync_lab.mock.server import Account, MockCrm


def _json(payload: Any, status: int = 200) -> bytes:
    return response(status, orjson.dumps(payload), {"Content-Type": "application/json"})


def _error(status: int, message: str) -> bytes:
    return _json({"error": message}, status)


def account_view(mock: MockCrm, acct: Account) -> dict[str, Any]:
    spec = acct.spec
    base = mock.base_url(spec.crm, spec.name)
    view: dict[str, Any] = {
        "crm": spec.crm,
        "account": spec.name,
        "token": spec.bearer if spec.static_token else None,
        "base_url": base,
        # The windows model lists its spec as given (an unlimited account: limit 0).
        "limits": [
            {"limit": w.limit, "window_ms": w.window_ms}
            for w in (spec.limits if spec.model == "windows" else acct.limits.windows_view())
        ],
        "daily_limit": acct.limits.daily(0.0, acct.clock.wall(time.monotonic()))[1],
        **acct.limits.view(),
        "day_seconds": spec.day_seconds,
        "id_field": spec.id_field,
    }
    if acct.salesforce:
        view["instance_url"] = acct.instance_url or base
        view["duplicate_rule"] = spec.duplicate_rule
        view["token_url"] = f"{base}/services/oauth2/token"
    else:
        view["token_url"] = f"{base}/oauth/v1/token"
    oauth = spec.oauth
    if oauth is not None:
        view["oauth"] = {
            "client_id": oauth.client_id,
            "client_secret": oauth.client_secret,
            "refresh_token": acct.creds.refresh_token,
            "username": oauth.username or None,
            "token_lifetime": acct.creds.lifetime,
        }
    return view


def _clock_view(acct: Account) -> dict[str, Any]:
    wall = acct.clock.wall(time.monotonic())
    return {
        "wall": round(wall, 3),
        "iso": datetime.fromtimestamp(wall, UTC).isoformat(),
        "speed": acct.clock.speed,
    }


def _body(request: Request) -> dict[str, Any]:
    raw = request.body
    data = orjson.loads(raw) if raw else {}
    if not isinstance(data, dict):
        raise ValueError("the body must be a JSON object")
    return data


def _each(mock: MockCrm, body: dict[str, Any], act: Any) -> dict[str, Any]:
    return {f"{a.crm}/{a.spec.name}": act(a) for a in mock.targets(body)}


def _tokens(acct: Account, body: dict[str, Any]) -> dict[str, Any]:
    acct.creds.control(body)
    return acct.creds.view()


def _clock(acct: Account, body: dict[str, Any]) -> dict[str, Any]:
    now = time.monotonic()
    if "wall" in body:
        acct.clock.set_wall(float(body["wall"]), now)
    if "advance_seconds" in body:
        acct.clock.advance(float(body["advance_seconds"]))
    return _clock_view(acct)


def _usage(acct: Account, body: dict[str, Any]) -> dict[str, Any]:
    n = body.get("requests")
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError("usage needs requests: a whole number of at least 0")
    now = time.monotonic()
    acct.limits.spend(now, acct.clock.wall(now), n)
    used, most = acct.usage()
    return {"used": used, "max": most}


def _seed(acct: Account, body: dict[str, Any]) -> dict[str, Any]:
    rows = body.get("contacts", body.get("records"))
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise ValueError("seed needs contacts (or records): a list of objects")
    return acct.seed(rows)


def handle(mock: MockCrm, request: Request, segs: list[str]) -> bytes:
    what, method = segs[0], request.method
    try:
        if what == "health":
            return _json({"ok": True, "accounts": len(mock.accounts)})
        if what == "accounts" and method == "GET":
            return _json([account_view(mock, a) for a in mock.accounts.values()])
        if what == "accounts" and method == "POST":
            spec = AccountSpec.from_json(_body(request))
            return _json(account_view(mock, mock.add_account(spec)), 201)
        if what == "faults" and method == "GET":
            return _json(
                {f"{a.crm}/{a.spec.name}": a.faults.view() for a in mock.accounts.values()}
            )
        if what == "faults" and method == "POST":
            targets = mock.set_faults(_body(request))
            return _json({f"{a.crm}/{a.spec.name}": a.faults.view() for a in targets})
        if what in ("tokens", "clock", "seed", "usage") and method == "POST":
            body = _body(request)
            act = {"tokens": _tokens, "clock": _clock, "seed": _seed, "usage": _usage}[what]
            return _json(_each(mock, body, lambda a: act(a, body)))
        if what == "stats" and method == "GET":
            return _json(mock.stats())
        if what == "records" and method == "GET" and len(segs) == 3:
            acct = mock.account(segs[1], segs[2])
            if acct is None:
                return _error(404, f"no mock account {segs[1]}/{segs[2]}")
            return _json(acct.store.view())
        if what == "reset" and method == "POST":
            body = _body(request)
            mock.reset(faults=bool(body.get("faults", True)))
            return _json({"ok": True})
    except UnknownAccount as exc:
        return _error(404, f"no mock account {exc.args[0]!r}")
    except (ValueError, TypeError, KeyError, orjson.JSONDecodeError) as exc:
        return _error(400, str(exc))
    return _error(404, f"no control endpoint {method} /_control/{'/'.join(segs)}")
