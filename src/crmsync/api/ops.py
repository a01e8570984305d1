"""Operator endpoints behind the dashboard: pause and resume, dead letters, one
contact's history, every connection's last minutes, and ``/healthz``.

Each route states what it needs of the caller's key in one place, its
``require(...)`` dependency: a role (read, write or admin; a key's role
``reader``, ``writer`` or ``admin`` includes the ones below it) and, through the
``Caller`` it returns, the tenant the answer is limited to (a tenant key's; an
admin key's: every tenant). The ``BearerAuth`` middleware has checked the key
before any route runs; a key without the role answers 403.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Annotated, Any, Literal, cast

import asyncpg
import orjson
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Path, Query, Request, Response
from pydantic import BaseModel, Field

from crmsync import connections, db, dlq
from crmsync.api import models
from crmsync.api.auth import principal
from crmsync.api.metrics import FORBIDDEN
from crmsync.apikeys import Role
from crmsync.contacts import ID_PATTERN
from crmsync.errors import UserError
from crmsync.queue import keys
from crmsync.queue.store import QueueStore
from crmsync.redis_client import REDIS_ERRORS, RedisClient, lazy_redis
from crmsync.settings import Settings
from crmsync.timeseries import FIELDS, Sampler

LOOKUP_LIMIT = 20  # contacts one lookup returns (an email may be shared)
HEALTH_TIMEOUT = 2.0  # seconds each server has to answer /healthz
# What a server that is down or unreachable raises.
DOWN = (TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError, *REDIS_ERRORS)

ConnectionIdPath = Annotated[str, Path(pattern=ID_PATTERN, max_length=64)]


@dataclass(frozen=True, slots=True)
class Need:
    """What a route needs of the caller's key."""

    role: Literal["read", "write", "admin"]


READ, WRITE, ADMIN = Need("read"), Need("write"), Need("admin")


@dataclass(frozen=True, slots=True)
class Caller:
    """Who asks: ``tenant`` limits every answer to that tenant's data (None: all)."""

    tenant: str | None = None


KEY_ROLE: dict[str, Role] = {"read": "reader", "write": "writer", "admin": "admin"}


def require(need: Need) -> Callable[[Request], Caller]:
    """The dependency that grants ``need`` to a key whose role includes it (else 403),
    limited to the key's tenant."""

    def dependency(request: Request) -> Caller:
        who = principal(request)
        if not who.may(KEY_ROLE[need.role]):
            FORBIDDEN.inc()
            raise HTTPException(
                403,
                detail=f"this API key's role is {who.role}; this route needs {KEY_ROLE[need.role]}",
            )
        return Caller(tenant=who.tenant)

    dependency.need = need  # type: ignore[attr-defined]  # read by tests and the auth
    return dependency


class DeadLetterAction(BaseModel):
    """Which dead letters to replay or purge: all given conditions hold; ``all``
    must be true to mean every dead letter (of the caller's tenant)."""

    connection: str | None = Field(default=None, pattern=ID_PATTERN, max_length=64)
    ids: list[int] | None = Field(default=None, max_length=10_000)
    error: str | None = Field(default=None, max_length=200)
    all: bool = False


class PauseBody(BaseModel):
    reason: str = Field(default=connections.DEFAULT_PAUSE_REASON, max_length=500)


@dataclass
class OpsState:
    """What the operator endpoints share in one API process."""

    redis: RedisClient
    sampler: Sampler


def _json(obj: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(obj), status_code=status, media_type="application/json")


def _pool(request: Request) -> asyncpg.Pool[Any]:
    return cast("asyncpg.Pool[Any]", request.app.state.pool)


def _client(settings: Settings) -> RedisClient:
    return lazy_redis(
        settings.redis_url, settings.redis_mode, socket_connect_timeout=2, socket_timeout=5
    )


@contextlib.asynccontextmanager
async def _redis(request: Request) -> AsyncIterator[RedisClient]:
    """The running app's client; a short-lived one where the lifespan did not run
    (an app under httpx's ASGITransport answers too, it just samples nothing)."""
    state: OpsState | None = getattr(request.app.state, "ops", None)
    if state is not None:
        yield state.redis
        return
    client = _client(request.app.state.settings)
    try:
        yield client
    finally:
        await client.aclose()


def _sampler(request: Request) -> Sampler:
    state: OpsState | None = getattr(request.app.state, "ops", None)
    return state.sampler if state is not None else Sampler()


async def _visible(pool: asyncpg.Pool[Any], caller: Caller, connection_id: str) -> None:
    """404 unless the connection exists and belongs to the caller's tenant."""
    tenant = await pool.fetchval(db.q("ops_connection_tenant"), connection_id)
    if tenant is None or (caller.tenant is not None and tenant != caller.tenant):
        raise HTTPException(404, detail=f"no connection {connection_id!r}")


async def _scope(pool: asyncpg.Pool[Any], caller: Caller, connection_id: str | None) -> None:
    """A named connection must be one the caller sees (its tenant's)."""
    if connection_id is not None:
        await _visible(pool, caller, connection_id)


@contextlib.asynccontextmanager
async def running(app: FastAPI) -> AsyncIterator[None]:
    """For the app's lifespan: the Redis client of these endpoints and the
    once-a-second sampler of every connection (``crmsync.timeseries``)."""
    state = app.state.ops = OpsState(_client(app.state.settings), Sampler())
    stop = asyncio.Event()

    async def load() -> list[asyncpg.Record]:
        return list(await app.state.pool.fetch(db.q("ops_connections")))

    task = asyncio.create_task(state.sampler.run(state.redis, load, stop))
    try:
        yield
    finally:
        stop.set()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await state.redis.aclose()
        app.state.ops = None


router = APIRouter()


@router.get("/healthz")
async def healthz(request: Request) -> Response:
    """200 when PostgreSQL and Redis answer; else 503 naming the one that does not."""

    async def pg() -> None:
        await _pool(request).fetchval("SELECT 1", timeout=HEALTH_TIMEOUT)

    async def rd() -> None:
        async with _redis(request) as client:
            await asyncio.wait_for(client.ping(), HEALTH_TIMEOUT)

    checks = {"postgresql": pg(), "redis": rd()}
    results = await asyncio.gather(*checks.values(), return_exceptions=True)
    out: dict[str, Any] = {}
    down = []
    for name, res in zip(checks, results, strict=True):
        if isinstance(res, BaseException):
            if not isinstance(res, DOWN):
                raise res
            out[name] = f"down: {type(res).__name__}: {res}".strip().rstrip(":")
            down.append({"postgresql": "PostgreSQL", "redis": "Redis"}[name])
        else:
            out[name] = "ok"
    if down:
        return _json({"status": "unavailable", **out, "error": f"{' and '.join(down)} down"}, 503)
    return _json({"status": "ok", **out})


@router.post("/v1/connections/{id}/pause", response_model=models.Paused)
async def pause(
    id: ConnectionIdPath,
    request: Request,
    body: PauseBody | None = None,
    caller: Caller = Depends(require(ADMIN)),
) -> Response:
    await _visible(_pool(request), caller, id)
    reason = (body or PauseBody()).reason
    with _as_http():
        await connections.pause(_pool(request), id, reason)
    return _json({"id": id, "paused": True, "paused_reason": reason.strip() or None})


@router.post("/v1/connections/{id}/resume", response_model=models.Paused)
async def resume(
    id: ConnectionIdPath, request: Request, caller: Caller = Depends(require(ADMIN))
) -> Response:
    """Send again: not paused, and no longer held back by a CRM's 429 or quota
    headers (for every worker at once)."""
    await _visible(_pool(request), caller, id)
    with _as_http():
        await connections.resume(_pool(request), id)
    # Also ends a CRM's block and slow-down, for every worker.
    async with _redis(request) as client:
        await QueueStore(client).resume(id)
    return _json({"id": id, "paused": False, "paused_reason": None})


@router.get("/v1/series", response_model=models.Series)
async def series(
    request: Request,
    since: Annotated[int, Query(ge=0, description="epoch ms: points after it")] = 0,
    connection: Annotated[str | None, Query(pattern=ID_PATTERN, max_length=64)] = None,
    caller: Caller = Depends(require(READ)),
) -> Response:
    """Each connection's last minutes, sampled once a second by this API process."""
    pool = _pool(request)
    if connection is not None:
        await _visible(pool, caller, connection)
        ids = [connection]
    else:
        ids = [
            r["id"]
            for r in await pool.fetch(db.q("ops_connections"))
            if caller.tenant is None or r["tenant"] == caller.tenant
        ]
    return _json({"fields": FIELDS, "series": _sampler(request).series(ids, since)})


@router.get("/v1/dead-letters", response_model=models.DeadLetters)
async def dead_letters(
    request: Request,
    connection: Annotated[str | None, Query(pattern=ID_PATTERN, max_length=64)] = None,
    error: Annotated[str | None, Query(max_length=200)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    state: Annotated[
        dlq.Which, Query(description="open (default), resolved (history) or all")
    ] = "open",
    caller: Caller = Depends(require(READ)),
) -> Response:
    """Dead letters with the CRM's error: the open ones, or the resolved history."""
    pool = _pool(request)
    await _scope(pool, caller, connection)
    with _as_http():
        f = dlq.DeadFilter(connection, error, tenant=caller.tenant, which=state)
        rows, total = await dlq.list_dead(pool, f, limit=limit)
    return _json({"dead_letters": rows, "total": total})


@contextlib.contextmanager
def _as_http() -> Iterator[None]:
    """A ``UserError`` of the shared code (a connection removed meanwhile) as 404/422."""
    try:
        yield
    except UserError as exc:
        text = str(exc)
        raise HTTPException(404 if text.startswith("no connection") else 422, text) from None


def _filter(body: DeadLetterAction, caller: Caller) -> dlq.DeadFilter:
    ids = tuple(body.ids) if body.ids else None
    f = dlq.DeadFilter(body.connection, body.error, ids, tenant=caller.tenant)
    if f.empty and not body.all:
        raise HTTPException(
            422,
            detail="all: must be true to mean every dead letter (or give connection, ids or error)",
        )
    return f


@router.post("/v1/dead-letters/replay", response_model=models.Replayed)
async def replay(
    body: DeadLetterAction, request: Request, caller: Caller = Depends(require(WRITE))
) -> Response:
    pool = _pool(request)
    await _scope(pool, caller, body.connection)
    f = _filter(body, caller)
    async with _redis(request) as client:
        with _as_http():
            n = await dlq.replay(pool, QueueStore(client), f, all_=body.all)
    return _json({"replayed": n})


@router.post("/v1/dead-letters/purge", response_model=models.Purged)
async def purge(
    body: DeadLetterAction, request: Request, caller: Caller = Depends(require(WRITE))
) -> Response:
    pool = _pool(request)
    await _scope(pool, caller, body.connection)
    f = _filter(body, caller)
    with _as_http():
        n = await dlq.purge(pool, f, all_=body.all)
    return _json({"purged": n})


@router.get("/v1/contacts:lookup", response_model=models.Lookup)
async def lookup(
    request: Request,
    q: Annotated[str, Query(min_length=1, max_length=320, description="contact id or email")],
    caller: Caller = Depends(require(READ)),
) -> Response:
    """Contacts whose id or email is ``q``: the current row and, per connection,
    the ledger, whether it waits in the queue, and its dead letters."""
    pool = _pool(request)
    q = q.strip()
    async with pool.acquire() as pg:
        rows = await pg.fetch(db.q("ops_contact_lookup"), q, caller.tenant, LOOKUP_LIMIT)
        found = []
        for r in rows:
            ledger = await pg.fetch(db.q("ops_contact_ledger"), r["id"], r["tenant"])
            dead = await pg.fetch(db.q("ops_contact_dead_letters"), r["id"], r["tenant"])
            found.append(
                {
                    "contact": dict(r),
                    "sync": [dict(s) for s in ledger],
                    "dead_letters": [dict(d) for d in dead],
                }
            )
    async with _redis(request) as client:
        for item in found:
            await _queued(client, item)
    return _json({"query": q, "contacts": found})


async def _queued(redis: RedisClient, item: dict[str, Any]) -> None:
    """Mark each ledger row with where the contact waits in its connection's queue."""
    cid = item["contact"]["id"]
    try:
        pipe = redis.pipeline(transaction=False)
        for s in item["sync"]:
            ck = keys.connection(s["connection_id"])
            for k in (ck.ready, ck.leases, ck.delayed, ck.requeue):
                pipe.zscore(k, cid)
        scores = await pipe.execute()
    except REDIS_ERRORS:
        return  # the ledger still answers; "queue" stays unknown
    names = ("ready", "leased", "delayed", "ready")  # requeue: waits to be ready again
    for i, s in enumerate(item["sync"]):
        mine = scores[i * 4 : i * 4 + 4]
        where = [name for name, score in zip(names, mine, strict=True) if score is not None]
        s["queue"] = where[0] if where else None
