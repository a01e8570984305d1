"""Operator routes: connections, status, API keys and /metrics (dead letters, pause
and resume, series and lookup are ``api.ops``'s).

Each answers within the key's scope: a tenant key sees its tenant's
connections, status, dead letters and metric series only; an admin key sees
every tenant (``?tenant=`` narrows it) and alone manages keys.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

import asyncpg
import structlog
from fastapi import FastAPI, HTTPException, Path, Query, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from crmsync import apikeys, clock, connections
from crmsync.api import models
from crmsync.api.auth import principal, role
from crmsync.api.contacts import json, pool
from crmsync.api.metrics import FORBIDDEN, STATUS_AGGREGATES
from crmsync.contacts import ID_PATTERN
from crmsync.errors import UserError
from crmsync.redis_client import lazy_redis
from crmsync.report import collect, for_tenant, prometheus_text
from crmsync.settings import Settings

log = structlog.get_logger(__name__)

TenantQuery = Annotated[
    str | None,
    Query(pattern=ID_PATTERN, max_length=64, description="Admin keys: this tenant only."),
]
_REFUSALS: dict[int | str, dict[str, Any]] = {
    401: {"model": models.Error, "description": "No key, or an unknown or revoked one."},
    403: {"model": models.Error, "description": "The key's role may not do this."},
}


class ReportCache:
    """The every-tenant status report of /metrics, computed at most once per
    ``ttl`` seconds however often it is scraped; concurrent scrapes of a stale
    report wait for one computation instead of starting their own."""

    def __init__(self, ttl: float, now: Callable[[], float] = clock.monotonic) -> None:
        self.ttl = ttl
        self.now = now
        self._report: dict[str, Any] | None = None
        self._at = 0.0
        self._lock = asyncio.Lock()

    def _fresh(self) -> dict[str, Any] | None:
        if self._report is not None and self.now() - self._at < self.ttl:
            return self._report
        return None

    async def get(self, compute: Callable[[], Awaitable[dict[str, Any]]]) -> dict[str, Any]:
        report = self._fresh()
        if report is not None:
            return report
        async with self._lock:
            report = self._fresh()
            if report is None:
                report = await compute()
                STATUS_AGGREGATES.inc()
                self._report, self._at = report, self.now()
            return report


def scope_tenant(request: Request, asked: str | None) -> str | None:
    """The tenant a listing covers: a tenant key's own; an admin's ``?tenant=`` or all.
    A tenant key asking for another tenant gets 404, as for anything not in its tenant."""
    own = principal(request).tenant
    if own is None:
        return asked
    if asked is not None and asked != own:
        FORBIDDEN.inc()
        raise HTTPException(404, detail=f"no tenant {asked!r}")
    return own


async def report_of(request: Request, tenant: str | None) -> dict[str, Any]:
    """``report.collect`` with a short-lived Redis client (not a hot path)."""
    settings: Settings = request.app.state.settings
    client = lazy_redis(settings.redis_url, settings.redis_mode, socket_connect_timeout=2)
    try:
        return await collect(pool(request), client, tenant)
    finally:
        await client.aclose()


def register(app: FastAPI, settings: Settings) -> None:
    reader, admin = role("reader"), role("admin")
    cache = ReportCache(settings.metrics_cache_seconds)
    app.state.report_cache = cache

    @app.get("/metrics", tags=["operations"], response_class=Response)
    async def metrics(request: Request) -> Response:
        """Prometheus text. Needs a key unless CRMSYNC_METRICS_PUBLIC=1; a tenant key
        gets its tenant's series only, without the API process's own counters."""
        tenant = None if settings.metrics_public else principal(request).tenant
        # The API process's own counters concern every tenant: not for a tenant key.
        body = generate_latest() if tenant is None else b""
        try:
            report = await cache.get(lambda: report_of(request, None))
            body += prometheus_text(for_tenant(report, tenant))
        except (OSError, asyncpg.PostgresError) as exc:
            log.warning("metrics.status_failed", error=str(exc))
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    @app.get(
        "/v1/connections",
        openapi_extra=reader,
        response_model=models.Connections,
        responses=_REFUSALS,
        tags=["operations"],
    )
    async def list_connections(request: Request, tenant: TenantQuery = None) -> Response:
        """The connections of the key's tenant (admin keys: every tenant's); tokens
        show their last 4 characters at most."""
        rows = await connections.list_all(pool(request), scope_tenant(request, tenant))
        return json({"connections": rows})

    @app.get(
        "/v1/status",
        openapi_extra=reader,
        response_model=models.StatusReport,
        responses=_REFUSALS,
        tags=["operations"],
    )
    async def status(request: Request, tenant: TenantQuery = None) -> Response:
        """Ledger, queues, breakers, limits and dead letters per connection of the
        key's tenant (admin keys: every tenant's)."""
        return json(await report_of(request, scope_tenant(request, tenant)))

    @app.get(
        "/v1/keys",
        openapi_extra=admin,
        response_model=models.ApiKeys,
        responses=_REFUSALS,
        tags=["keys"],
    )
    async def list_keys(request: Request, tenant: TenantQuery = None) -> Response:
        """Every API key (never a secret)."""
        return json({"keys": await apikeys.list_keys(pool(request), tenant=tenant)})

    @app.post(
        "/v1/keys",
        status_code=201,
        openapi_extra=admin,
        response_model=models.ApiKeyCreated,
        responses={**_REFUSALS, 422: {"model": models.Error, "description": "Bad scope."}},
        tags=["keys"],
    )
    async def create_key(request: Request, body: models.ApiKeyIn) -> Response:
        """A new key; `key` is shown in this answer only (only its hash is kept)."""
        try:
            row, key = await apikeys.create(
                pool(request), role=body.role, tenant=body.tenant, name=body.name
            )
        except UserError as exc:
            raise HTTPException(422, detail=str(exc)) from None
        return json({**row, "key": key}, 201)

    @app.delete(
        "/v1/keys/{key_id}",
        openapi_extra=admin,
        response_model=models.ApiKey,
        responses={**_REFUSALS, 404: {"model": models.Error, "description": "No such key."}},
        tags=["keys"],
    )
    async def revoke_key(request: Request, key_id: Annotated[str, Path(max_length=64)]) -> Response:
        """Revoke a key: refused everywhere within CRMSYNC_API_KEY_CACHE_SECONDS."""
        try:
            return json(await apikeys.revoke(pool(request), key_id))
        except UserError as exc:
            raise HTTPException(404, detail=str(exc)) from None
