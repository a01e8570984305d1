"""HTTP calls to the mock CRM's ``/_control`` endpoints (see crmsync_lab.mock.control)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

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


async def seed(
    session: aiohttp.ClientSession,
    mock_url: str,
    contacts: list[dict[str, Any]],
    account: str = "*",
) -> dict[str, Any]:
    """``POST /_control/seed``: contacts that exist in the CRM before crmsync."""
    body = {"account": account, "contacts": contacts}
    out: dict[str, Any] = await _json(session, "POST", f"{mock_url}/_control/seed", body)
    return out
