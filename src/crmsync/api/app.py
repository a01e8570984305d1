"""The HTTP API: contacts in, sync state and connections out.

Writes are set-based upserts; the database trigger decides what is a change
and captures it into the outbox, so the API holds no sync logic of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Annotated, Any, cast

import asyncpg
import orjson
import redis.asyncio as aioredis
import structlog
import uvicorn
from fastapi import FastAPI, HTTPException, Path, Request, Response
from fastapi.exception_handlers import request_validation_exception_handler
from fastapi.exceptions import RequestValidationError
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.types import ASGIApp, Receive, Scope, Send

from crmsync import connections, db
from crmsync.api import ops, ui
from crmsync.api.auth import BearerAuth
from crmsync.api.metrics import (
    BATCHES,
    CONTACTS_DELETED,
    CONTACTS_WRITTEN,
    VALIDATION_ERRORS,
)
from crmsync.contacts import ID_PATTERN, BatchIn, ContactPut, ContactWithId, columns, duplicate_ids
from crmsync.errors import UserError
from crmsync.report import collect, prometheus_text
from crmsync.settings import Settings

log = structlog.get_logger(__name__)

ContactIdPath = Annotated[str, Path(pattern=ID_PATTERN, max_length=64)]
_CONTACT_KEYS = (
    "id",
    "tenant",
    "email",
    "first_name",
    "last_name",
    "company",
    "status",
    "version",
    "updated_at",
    "deleted_at",
)


class JsonBodies:
    """Every /v1 body is JSON: read it as JSON even when a client labels it
    otherwise (``curl -d`` sends form encoding), so validation names fields."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and scope["method"] in ("PUT", "POST")
            and scope["path"].startswith("/v1/")
        ):
            headers = [(k, v) for k, v in scope["headers"] if k != b"content-type"]
            headers.append((b"content-type", b"application/json"))
            scope = {**scope, "headers": headers}
        await self.app(scope, receive, send)


def _json(obj: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(obj), status_code=status, media_type="application/json")


async def _report(request: Request) -> dict[str, Any]:
    """The status report of ``/v1/status`` and ``/metrics`` (``status.collect``).
    Not a hot path: one short-lived Redis client per call, nothing to leak."""
    settings: Settings = request.app.state.settings
    client = aioredis.from_url(settings.redis_url, socket_connect_timeout=2)
    try:
        return await collect(_pool(request), client)
    finally:
        await client.aclose()


def _contact(row: asyncpg.Record) -> dict[str, Any]:
    return {k: row[k] for k in _CONTACT_KEYS}


def _pool(request: Request) -> asyncpg.Pool[Any]:
    return cast("asyncpg.Pool[Any]", request.app.state.pool)


async def _upsert(pool: asyncpg.Pool[Any], items: list[ContactWithId]) -> list[asyncpg.Record]:
    # One statement: atomic on its own, and the trigger writes the outbox rows
    # of the whole batch in the same transaction.
    rows: list[asyncpg.Record] = await pool.fetch(db.q("api_upsert_contacts"), *columns(items))
    changed = sum(1 for r in rows if r["changed"])
    CONTACTS_WRITTEN.labels("changed").inc(changed)
    CONTACTS_WRITTEN.labels("unchanged").inc(len(items) - changed)
    return rows


def _invalid(errors: list[dict[str, Any]]) -> RequestValidationError:
    return RequestValidationError(errors)


async def _on_invalid(request: Request, exc: Exception) -> Response:
    VALIDATION_ERRORS.inc()
    return await request_validation_exception_handler(request, cast(RequestValidationError, exc))


def create_app(settings: Settings, *, pool: asyncpg.Pool[Any] | None = None) -> FastAPI:
    """The FastAPI app. Pass ``pool`` to share one (tests, ``crmsync up``); else the
    lifespan opens and closes its own."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if pool is None:
            app.state.pool = await db.create_pool(settings.database_url, min_size=1, max_size=10)
        try:
            async with ops.running(app):
                yield
        finally:
            if pool is None:
                await app.state.pool.close()

    app = FastAPI(
        title="crmsync",
        summary="Contacts in PostgreSQL, kept in sync with Salesforce and HubSpot.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    if pool is not None:
        app.state.pool = pool
    app.add_middleware(JsonBodies)
    app.add_middleware(BearerAuth, keys=settings.api_key_set)  # outermost: runs first
    app.add_exception_handler(RequestValidationError, _on_invalid)
    app.include_router(ops.router)  # /healthz and the operators' /v1 routes
    app.include_router(ui.router)  # the dashboard at /ui

    @app.get("/metrics")
    async def metrics(request: Request) -> Response:
        # This process's own metrics, then every connection's state and the
        # workers' counters (kept in Redis, so any API instance can export them).
        body = generate_latest()
        try:
            body += prometheus_text(await _report(request))
        except (OSError, asyncpg.PostgresError) as exc:
            log.warning("metrics.status_failed", error=str(exc))
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    @app.put("/v1/contacts/{id}")
    async def put_contact(id: ContactIdPath, body: ContactPut, request: Request) -> Response:
        if body.id is not None and body.id != id:
            raise _invalid(
                [
                    {
                        "type": "value_error",
                        "loc": ("body", "id"),
                        "msg": "must match the id in the path",
                        "input": body.id,
                    }
                ]
            )
        item = ContactWithId(id=id, **body.model_dump(exclude={"id"}))
        rows = await _upsert(_pool(request), [item])
        if not rows:  # a concurrent writer committed after our snapshot
            row = await _pool(request).fetchrow(db.q("api_get_contact"), id)
            assert row is not None
            return _json({**_contact(row), "changed": False})
        return _json({**_contact(rows[0]), "changed": rows[0]["changed"]})

    @app.post("/v1/contacts:batch")
    async def batch(body: BatchIn, request: Request) -> Response:
        dups = duplicate_ids([c.id for c in body.contacts])
        if dups:
            raise _invalid(
                [
                    {
                        "type": "value_error",
                        "loc": ("body", "contacts", i, "id"),
                        "msg": f"duplicate id {cid!r} in batch (first at index {first})",
                        "input": cid,
                    }
                    for i, cid, first in dups
                ]
            )
        rows = await _upsert(_pool(request), body.contacts)
        BATCHES.inc()
        by_id = {r["id"]: r for r in rows}
        out = [
            {"id": c.id, "version": by_id[c.id]["version"], "changed": by_id[c.id]["changed"]}
            if c.id in by_id
            else {"id": c.id, "version": None, "changed": False}
            for c in body.contacts
        ]
        return _json(
            {"count": len(out), "changed": sum(1 for o in out if o["changed"]), "contacts": out}
        )

    @app.delete("/v1/contacts/{id}")
    async def delete_contact(id: ContactIdPath, request: Request) -> Response:
        row = await _pool(request).fetchrow(db.q("api_soft_delete_contact"), id)
        if row is None:
            raise HTTPException(404, detail=f"no contact {id!r}")
        if row["changed"]:
            CONTACTS_DELETED.inc()
        return _json({**_contact(row), "changed": row["changed"]})

    @app.get("/v1/contacts/{id}")
    async def get_contact(id: ContactIdPath, request: Request) -> Response:
        async with _pool(request).acquire() as conn:
            row = await conn.fetchrow(db.q("api_get_contact"), id)
            if row is None:
                raise HTTPException(404, detail=f"no contact {id!r}")
            sync = await conn.fetch(db.q("api_contact_sync_state"), id)
        return _json({**_contact(row), "sync": [dict(s) for s in sync]})

    @app.get("/v1/connections")
    async def list_connections(request: Request) -> Response:
        return _json({"connections": await connections.list_all(_pool(request))})

    @app.get("/v1/status")
    async def status(request: Request) -> Response:
        return _json(await _report(request))

    return app


class _QuietServer(uvicorn.Server):
    """A uvicorn server that leaves SIGINT/SIGTERM to its host process."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def serve(settings: Settings, *, handle_signals: bool = True) -> None:
    """Serve the API until cancelled, or until SIGINT/SIGTERM when ``handle_signals``.

    ``crmsync up`` passes ``handle_signals=False`` and cancels this coroutine
    from its own signal handling; uvicorn then shuts down gracefully.
    """
    if not settings.api_key_set:
        log.warning("no API keys configured: every /v1 route answers 401; set CRMSYNC_API_KEYS")
    pool = await db.create_pool(settings.database_url, min_size=1, max_size=10)
    config = uvicorn.Config(
        create_app(settings, pool=pool),
        host=settings.api_host,
        port=settings.api_port,
        log_level=settings.log_level,
        access_log=False,  # no per-request logging on the hot path; counts are metrics
        lifespan="on",
    )
    server = uvicorn.Server(config) if handle_signals else _QuietServer(config)
    try:
        await server.serve()
    except asyncio.CancelledError:
        # Cancelled inside uvicorn's main loop: finish its graceful shutdown.
        server.should_exit = True
        if server.started:
            await server.shutdown()
        raise
    except SystemExit as exc:  # uvicorn exits when it cannot bind
        raise UserError(
            f"cannot serve the API on {settings.api_host}:{settings.api_port}; "
            "set CRMSYNC_API_PORT (--port) to a free port"
        ) from exc
    finally:
        await pool.close()
