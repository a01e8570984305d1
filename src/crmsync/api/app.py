"""The HTTP API: contacts in, sync state and connections out, each key in its scope.

Routes live in ``api.contacts`` (a contact is (tenant, id)) and ``api.views``
(connections, status, dead letters, keys, metrics); ``api.auth`` says who may
call which. ``/healthz``, ``/docs`` and ``/openapi.json`` answer without a key:
they hold no data (the document is the same for every deployment), and the
docs page must load in a browser before its Authorize button can send a key.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any, cast

import asyncpg
import orjson
import structlog
import uvicorn
from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from crmsync import db, redact
from crmsync.api import contacts, ops, ui, views
from crmsync.api.auth import ROLE_KEY, BearerAuth, ScopedRoute
from crmsync.api.metrics import VALIDATION_ERRORS
from crmsync.apikeys import KeyVerifier
from crmsync.contacts import MAX_BATCH
from crmsync.errors import UserError
from crmsync.settings import Settings

log = structlog.get_logger(__name__)

BEARER = "bearer"


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


class BodyLimit:
    """413 for a request body over ``limit`` bytes, before anything parses it: at
    once when its Content-Length says so, else as soon as the bytes read pass it."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in ("PUT", "POST", "PATCH"):
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"").strip()
        if declared.isdigit() and int(declared) > self.limit:
            await _answer_json(send, 413, self._detail())
            return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    # Raised where the body is read; FastAPI answers it as it is.
                    raise StarletteHTTPException(413, detail=self._detail())
            return message

        await self.app(scope, limited, send)

    def _detail(self) -> str:
        return (
            f"the request body is over {self.limit} bytes (CRMSYNC_API_MAX_BODY_BYTES); "
            f"send at most {MAX_BATCH} contacts per batch"
        )


async def _answer_json(send: Send, status: int, detail: str) -> None:
    body = orjson.dumps({"detail": detail})
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


EXCERPT_CHARS = 100  # of the input a 422 quotes


def _excerpt(value: Any) -> Any:
    """What a 422 quotes of a bad input: short, masked, storable; never a whole body."""
    if value is None or isinstance(value, bool | int | float):
        return value
    text = value if isinstance(value, str) else orjson.dumps(value, default=str).decode()
    if len(text) > EXCERPT_CHARS:
        text = text[: EXCERPT_CHARS - 1] + "…"
    return _UNSTORABLE.sub("\ufffd", redact.text(text))


_UNSTORABLE = re.compile(r"[\x00\ud800-\udfff]")


async def _on_invalid(request: Request, exc: Exception) -> Response:
    """422 naming each bad field, quoting at most a short excerpt of what was sent."""
    VALIDATION_ERRORS.inc()
    errors = cast(RequestValidationError, exc).errors()
    detail = [
        {
            "type": e.get("type"),
            "loc": [p if isinstance(p, int) else str(p) for p in e.get("loc", ())],
            "msg": _excerpt(str(e.get("msg", "invalid"))),
            **({"input": _excerpt(e["input"])} if "input" in e else {}),
        }
        for e in errors[:20]
    ]
    return Response(orjson.dumps({"detail": detail}), 422, media_type="application/json")


def _refusal(description: str) -> dict[str, Any]:
    error = {"$ref": "#/components/schemas/Error"}
    return {"description": description, "content": {"application/json": {"schema": error}}}


def _declared_roles() -> dict[tuple[str, str], str]:
    """(path, method) -> the key role an ``ops`` route needs, declared by its
    ``ops.require`` dependency (the contact and view routes carry ``role(...)``)."""
    out: dict[tuple[str, str], str] = {}
    for route in ops.router.routes:
        if not isinstance(route, APIRoute):
            continue
        for dep in route.dependant.dependencies:
            need = getattr(dep.call, "need", None)
            if isinstance(need, ops.Need):
                for method in route.methods or ():
                    out[(route.path, method)] = ops.KEY_ROLE[need.role]
    return out


def _openapi(app: FastAPI, settings: Settings) -> dict[str, Any]:
    """The OpenAPI document with the bearer scheme on every protected operation
    (the docs page's Authorize button) and the role each one needs."""
    if app.openapi_schema:
        return app.openapi_schema
    doc = get_openapi(title=app.title, version=app.version, summary=app.summary, routes=app.routes)
    doc.setdefault("components", {})["securitySchemes"] = {
        BEARER: {
            "type": "http",
            "scheme": "bearer",
            "description": "An API key: `crmsync keys create` or CRMSYNC_API_KEYS (admin).",
        }
    }
    needs = _declared_roles()
    for path, item in doc["paths"].items():
        for method, op in item.items():
            needed = op.setdefault(ROLE_KEY, needs.get((path, method.upper())))
            if needed is None:
                del op[ROLE_KEY]
            if path.startswith("/v1/") or (path == "/metrics" and not settings.metrics_public):
                op["security"] = [{BEARER: []}]
                op["responses"].setdefault("401", _refusal("No key, or an unknown or revoked one."))
            if needed is not None:
                op["responses"].setdefault("403", _refusal("The key's role may not do this."))
            if needed:
                op["description"] = (
                    op.get("description", "") + f"\n\nNeeds a {needed} key "
                    "(admin > writer > reader)."
                ).strip()
    app.openapi_schema = doc
    return doc


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
    app.router.route_class = ScopedRoute  # every route's role is checked before its body
    app.state.settings = settings
    if pool is not None:
        app.state.pool = pool
    app.add_middleware(JsonBodies)
    app.add_middleware(BodyLimit, limit=settings.api_max_body_bytes)
    verifier = KeyVerifier(settings.api_key_set, ttl=settings.api_key_cache_seconds)
    app.state.key_verifier = verifier
    # Outermost: runs first.
    app.add_middleware(BearerAuth, verifier=verifier, metrics_public=settings.metrics_public)
    app.add_exception_handler(RequestValidationError, _on_invalid)
    app.include_router(ops.router)  # /healthz and the operators' /v1 routes
    app.include_router(ui.router)  # the dashboard at /ui

    contacts.register(app)
    views.register(app, settings)
    app.openapi = lambda: _openapi(app, settings)  # type: ignore[method-assign]
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
        log.info("no bootstrap admin key in CRMSYNC_API_KEYS: only keys from `crmsync keys create`")
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
