"""HTTP calls to the mock CRM's ``/_control`` endpoints (see crmsync_lab.mock.control)."""

from __future__ import annotations

import time
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import aiohttp

from crmsync.errors import UserError


async def _json(session: aiohttp.ClientSession, method: str, url: str, body: Any = None) -> Any:
    async with session.request(method, url, json=body) as r:
        if r.status >= 300:
            raise UserError(f"mock CRM {method} {url} answered {r.status}: {await r.text()}")
        return await r.json()


async def accounts(session: aiohttp.ClientSession, mock_url: str) -> list[dict[str, Any]]:
    """Every account: crm, account, token, base_url, limits."""
    out: list[dict[str, Any]] = await _json(session, "GET", f"{mock_url}/_control/accounts")
    return out


async def stats(session: aiohttp.ClientSession, mock_url: str) -> dict[str, Any]:
    out: dict[str, Any] = await _json(session, "GET", f"{mock_url}/_control/stats")
    return out


async def records(
    session: aiohttp.ClientSession, mock_url: str, crm: str, account: str
) -> list[dict[str, Any]]:
    url = f"{mock_url}/_control/records/{crm}/{account}"
    out: list[dict[str, Any]] = await _json(session, "GET", url)
    return out


async def faults(session: aiohttp.ClientSession, mock_url: str, spec: Mapping[str, Any]) -> None:
    body = {k: v for k, v in spec.items() if v is not None}
    await _json(session, "POST", f"{mock_url}/_control/faults", body)


async def tokens(
    session: aiohttp.ClientSession, mock_url: str, spec: Mapping[str, Any]
) -> dict[str, Any]:
    """``POST /_control/tokens``: revoke tokens, change their lifetime, install a
    new refresh token (see crmsync_lab.mock.auth)."""
    out: dict[str, Any] = await _json(session, "POST", f"{mock_url}/_control/tokens", dict(spec))
    return out


async def usage(
    session: aiohttp.ClientSession, mock_url: str, crm: str, account: str, requests: int
) -> dict[str, Any]:
    """``POST /_control/usage``: other apps of the account spend ``requests`` of its
    daily budget now; the account's ``{used, max}`` after."""
    body = {"crm": crm, "account": account, "requests": requests}
    out: dict[str, Any] = await _json(session, "POST", f"{mock_url}/_control/usage", body)
    return out


def crm_settings(view: Mapping[str, Any]) -> list[str]:
    """``--settings`` of a connection holding a mock account's CRM model (empty for
    an account of the windows model): what an operator sets from the CRM's setup
    page (allocation, tier, time zone), and the account's compressed day."""
    if view.get("model") not in ("salesforce", "hubspot"):
        return []
    out = ["limit_model=crm", f"daily_limit={int(view['daily_limit'])}"]
    if view["crm"] == "salesforce":
        out.append(f"concurrency={int(view.get('concurrency') or 25)}")
    else:
        out += [f"tier={int(view['tier'])}", f"time_zone={view['time_zone']}"]
    day = float(view.get("day_seconds") or 86_400)
    if day != 86_400:
        out.append(f"day_seconds={day:g}")
    return out


def aligned_wall(now: float, view: Mapping[str, Any]) -> float | None:
    """The wall time (epoch s) to give a HubSpot account with a compressed day now,
    so its midnights fall where crmsync's compressed days start
    (``crmsync.crm_limits.day_bounds``): a local midnight two days ahead plus the
    share of the compressed day already past. None when no alignment is needed.
    Daylight saving changes inside the run move its midnights by the change."""
    day = float(view.get("day_seconds") or 86_400)
    if view.get("model") != "hubspot" or day == 86_400:
        return None
    tz = ZoneInfo(str(view.get("time_zone") or "UTC"))
    off = datetime.fromtimestamp(now, tz).utcoffset()
    shift = (off.total_seconds() if off else 0.0) * day / 86_400
    frac = ((now + shift) % day) / day
    local = datetime.fromtimestamp(now, tz).date() + timedelta(days=2)
    midnight = datetime(local.year, local.month, local.day, tzinfo=tz).timestamp()
    return midnight + frac * 86_400


async def align_clock(
    session: aiohttp.ClientSession, mock_url: str, view: Mapping[str, Any]
) -> None:
    """Move a compressed HubSpot account's clock so its days are crmsync's."""
    wall = aligned_wall(time.time(), view)
    if wall is not None:
        body = {"crm": view["crm"], "account": view["account"], "wall": wall}
        await _json(session, "POST", f"{mock_url}/_control/clock", body)
