"""The mock's control endpoints, under ``/_control/``.

``GET  health``                      -> ``{"ok": true}``
``GET  accounts``                    -> every account with base URL, token, limits
``POST accounts``                    ``{crm, account, token?, limit?, window_ms?, ...}`` (config.py)
``GET  faults`` / ``POST faults``    ``{"account": "<name>|*", "crm"?, ...}`` (faults.py)
``GET  stats``                       -> per account: requests, by_status, violations,
                                        max_in_any_1s, records, duplicates, ...; and totals
``GET  records/<crm>/<account>``     -> the account's current records
``POST reset``                       ``{"faults": true}``: forget records, counters (and faults)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson

from crmsync_lab.mock.config import AccountSpec
from crmsync_lab.mock.http import Request, response

if TYPE_CHECKING:
    from crmsync_lab.mock.server import MockCrm


def _json(payload: Any, status: int = 200) -> bytes:
    return response(status, orjson.dumps(payload), {"Content-Type": "application/json"})


def _error(status: int, message: str) -> bytes:
    return _json({"error": message}, status)


def account_view(mock: MockCrm, spec: AccountSpec) -> dict[str, Any]:
    return {
        "crm": spec.crm,
        "account": spec.name,
        "token": spec.bearer,
        "base_url": mock.base_url(spec.crm, spec.name),
        "limits": [{"limit": w.limit, "window_ms": w.window_ms} for w in spec.limits],
        "daily_limit": mock.account(spec.crm, spec.name).limits.daily_limit,  # type: ignore[union-attr]
    }


def _body(request: Request) -> dict[str, Any]:
    raw = request.body
    data = orjson.loads(raw) if raw else {}
    if not isinstance(data, dict):
        raise ValueError("the body must be a JSON object")
    return data


def handle(mock: MockCrm, request: Request, segs: list[str]) -> bytes:
    what, method = segs[0], request.method
    try:
        if what == "health":
            return _json({"ok": True, "accounts": len(mock.accounts)})
        if what == "accounts" and method == "GET":
            return _json([account_view(mock, a.spec) for a in mock.accounts.values()])
        if what == "accounts" and method == "POST":
            spec = AccountSpec.from_json(_body(request))
            mock.add_account(spec)
            return _json(account_view(mock, spec), 201)
        if what == "faults" and method == "GET":
            return _json(
                {f"{a.crm}/{a.spec.name}": a.faults.view() for a in mock.accounts.values()}
            )
        if what == "faults" and method == "POST":
            spec_f = _body(request)
            try:
                targets = mock.set_faults(spec_f)
            except KeyError:
                return _error(404, f"no mock account {spec_f.get('account')!r}")
            return _json({f"{a.crm}/{a.spec.name}": a.faults.view() for a in targets})
        if what == "stats" and method == "GET":
            return _json(mock.stats())
        if what == "records" and method == "GET" and len(segs) == 3:
            acct = mock.account(segs[1], segs[2])
            if acct is None:
                return _error(404, f"no mock account {segs[1]}/{segs[2]}")
            return _json(acct.api.view())
        if what == "reset" and method == "POST":
            body = _body(request)
            mock.reset(faults=bool(body.get("faults", True)))
            return _json({"ok": True})
    except (ValueError, TypeError, KeyError, orjson.JSONDecodeError) as exc:
        return _error(400, str(exc))
    return _error(404, f"no control endpoint {method} /_control/{'/'.join(segs)}")
