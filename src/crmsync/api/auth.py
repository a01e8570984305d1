"""Who may call what: bearer API keys, roles and tenants, checked before any body is read.

``BearerAuth`` (a plain ASGI middleware: FastAPI dependencies run after the
body is parsed, so a malformed body would answer 422 to a caller without a key)
turns the bearer key into a ``Principal`` or answers 401. ``ScopedRoute`` then
checks the route's role (declared as ``role(...)`` on the route, and shown in
the OpenAPI document) and the tenant named in its path, still before the body
is read: a tenant key that names another tenant's path is refused without
looking anything up (409 for a write, 404 for a read: nothing about the other
tenant's data leaks).
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any, cast

import asyncpg
import orjson
import structlog
from fastapi import HTTPException, Request, Response
from fastapi.routing import APIRoute
from starlette.types import ASGIApp, Receive, Scope, Send

from crmsync.api.metrics import AUTH_FAILURES, FORBIDDEN
from crmsync.apikeys import KeyVerifier, Principal, Role

log = structlog.get_logger(__name__)

ROLE_KEY = "x-crmsync-role"
_WRITES = frozenset({"PUT", "POST", "DELETE", "PATCH"})
_UNAUTHORIZED = orjson.dumps(
    {"detail": "missing, unknown or revoked API key; send Authorization: Bearer <key>"}
)
_UNAVAILABLE = orjson.dumps({"detail": "cannot check the API key now: PostgreSQL is unavailable"})


def role(needed: Role) -> dict[str, Any]:
    """``openapi_extra`` of a route that needs ``needed`` (or a role above it)."""
    return {ROLE_KEY: needed}


def principal(request: Request) -> Principal:
    """The caller of a protected route (set by BearerAuth)."""
    return cast(Principal, request.state.principal)


def tenant_conflict(acting: str, named: str, where: str) -> HTTPException:
    """409 for a write that names another tenant than the one it acts on."""
    return HTTPException(
        409,
        detail=f"{where} names tenant {named!r}, but this request acts on tenant {acting!r}: "
        "a contact belongs to one tenant and never moves to another; nothing was changed",
    )


async def _answer(send: Send, status: int, body: bytes, *extra: tuple[bytes, bytes]) -> None:
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        *extra,
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class BearerAuth:
    """Authenticates every ``/v1/`` request (and ``/metrics`` unless it is public)."""

    def __init__(self, app: ASGIApp, *, verifier: KeyVerifier, metrics_public: bool) -> None:
        self.app = app
        self.verifier = verifier
        self.metrics_public = metrics_public

    def protected(self, path: str) -> bool:
        return path.startswith("/v1/") or (path == "/metrics" and not self.metrics_public)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.protected(scope["path"]):
            await self.app(scope, receive, send)
            return
        header = next((v for k, v in scope["headers"] if k == b"authorization"), b"")
        scheme, _, key = header.decode("latin-1").partition(" ")
        key = key.strip()
        found: Principal | None = None
        if scheme.lower() == "bearer" and key:
            try:
                found = await self.verifier.verify(scope["app"].state.pool, key)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("api.key_check_failed", error=str(exc))
                await _answer(send, 503, _UNAVAILABLE)
                return
        if found is None:
            AUTH_FAILURES.inc()
            await _answer(send, 401, _UNAUTHORIZED, (b"www-authenticate", b"Bearer"))
            return
        scope = {**scope, "state": {**scope.get("state", {}), "principal": found}}
        await self.app(scope, receive, send)


class ScopedRoute(APIRoute):
    """A route whose role and path tenant are checked before its body is read."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        needed: Role | None = (self.openapi_extra or {}).get(ROLE_KEY)
        if needed is None:
            return handler
        writes = bool((self.methods or set()) & _WRITES)

        async def checked(request: Request) -> Response:
            who = principal(request)
            if not who.may(needed):
                FORBIDDEN.inc()
                raise HTTPException(
                    403, detail=f"this API key's role is {who.role}; this route needs {needed}"
                )
            named = request.path_params.get("tenant")
            if named is not None and who.tenant is not None and named != who.tenant:
                FORBIDDEN.inc()
                if writes:
                    raise tenant_conflict(who.tenant, named, "the path")
                # As if the thing were not there: it is not, in this key's tenant.
                raise HTTPException(404, detail=not_found(request.path_params))
            return await handler(request)

        return checked


def not_found(path_params: dict[str, Any]) -> str:
    """The one 404 message of a contact route, whether it was refused or missing."""
    cid = path_params.get("id")
    return f"no contact {cid!r}" if cid is not None else "not found"
