"""CRM adapters behind one protocol (``crmsync.crm.base.CrmAdapter``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import aiohttp

from crmsync.crm.base import CrmAdapter
from crmsync.crm.credentials import TokenSource
from crmsync.crm.hubspot import HubSpotAdapter
from crmsync.crm.salesforce import SalesforceAdapter
from crmsync.errors import UserError

ADAPTERS: dict[str, type[SalesforceAdapter] | type[HubSpotAdapter]] = {
    "salesforce": SalesforceAdapter,
    "hubspot": HubSpotAdapter,
}


def make_adapter(
    crm: str,
    *,
    base_url: str,
    token: str | TokenSource,
    settings: Mapping[str, Any],
    session: aiohttp.ClientSession,
) -> CrmAdapter:
    """The adapter for one connection, sending on the process's shared session;
    ``token``: a bearer token, or the connection's token source (crm/tokens.py)."""
    try:
        cls = ADAPTERS[crm]
    except KeyError:
        known = ", ".join(sorted(ADAPTERS))
        raise UserError(f"connection crm {crm!r} is not supported; use one of: {known}") from None
    return cls(base_url=base_url, token=token, settings=settings or {}, session=session)


__all__ = ["ADAPTERS", "CrmAdapter", "make_adapter"]
