"""Contact routes: a contact is (tenant, id), and every request acts on one tenant.

The tenant comes from the key (a tenant key) or from the path
(``/v1/tenants/{tenant}/...``, admin keys, or a tenant key naming its own); on
``/v1/contacts/...`` an admin key acts on the body's ``tenant`` (writes) or on
``default``. A body naming another tenant than the one the request acts on is
refused with 409 and nothing is written. Writes are set-based upserts; the
database trigger decides what is a change and captures it into the outbox.
"""

from __future__ import annotations

from enum import Enum
from typing import Annotated, Any, cast

import asyncpg
import orjson
from fastapi import FastAPI, HTTPException, Path, Request, Response
from fastapi.exceptions import RequestValidationError

from crmsync import db
from crmsync.api import models
from crmsync.api.auth import not_found, principal, role, tenant_conflict
from crmsync.api.metrics import BATCHES, CONTACTS_DELETED, CONTACTS_WRITTEN, TENANT_CONFLICTS
from crmsync.contacts import (
    DEFAULT_TENANT,
    ID_PATTERN,
    BatchIn,
    ContactPut,
    ContactWithId,
    columns,
    duplicate_ids,
)

ContactIdPath = Annotated[str, Path(pattern=ID_PATTERN, max_length=64)]
TenantPath = Annotated[str, Path(pattern=ID_PATTERN, max_length=64)]
CONTACT_KEYS = (
    "id",
    "tenant",
    "email",
    "first_name",
    "last_name",
    "company",
    "status",
    "attributes",
    "version",
    "updated_at",
    "deleted_at",
)
_REFUSALS: dict[int | str, dict[str, Any]] = {
    401: {"model": models.Error, "description": "No key, or an unknown or revoked one."},
    403: {"model": models.Error, "description": "The key's role may not do this."},
}
_NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"model": models.Error, "description": "No such contact in the tenant."}
}
_CONFLICT: dict[int | str, dict[str, Any]] = {
    409: {"model": models.Error, "description": "The body or path names another tenant."}
}


def json(obj: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(obj), status_code=status, media_type="application/json")


def pool(request: Request) -> asyncpg.Pool[Any]:
    return cast("asyncpg.Pool[Any]", request.app.state.pool)


def _contact(row: asyncpg.Record) -> dict[str, Any]:
    return {k: row[k] for k in CONTACT_KEYS}


def acting_tenant(
    request: Request, path_tenant: str | None, body_tenant: str | None, where: str = "the body"
) -> str:
    """The tenant a write acts on; 409 when the body names another one."""
    who = principal(request)
    acting = path_tenant or who.tenant or body_tenant or DEFAULT_TENANT
    if body_tenant is not None and body_tenant != acting:
        TENANT_CONFLICTS.inc()
        raise tenant_conflict(acting, body_tenant, where)
    return acting


def reading_tenant(request: Request, path_tenant: str | None) -> str:
    return path_tenant or principal(request).tenant or DEFAULT_TENANT


async def _upsert(
    pg: asyncpg.Pool[Any], items: list[ContactWithId], tenants: list[str]
) -> list[asyncpg.Record]:
    # One statement: atomic on its own, and the trigger writes the outbox rows
    # of the whole batch in the same transaction.
    rows: list[asyncpg.Record] = await pg.fetch(
        db.q("api_upsert_contacts"), *columns(items, tenants)
    )
    changed = sum(1 for r in rows if r["changed"])
    CONTACTS_WRITTEN.labels("changed").inc(changed)
    CONTACTS_WRITTEN.labels("unchanged").inc(len(items) - changed)
    return rows


async def put_contact(
    request: Request, id: str, body: ContactPut, path_tenant: str | None
) -> Response:
    if body.id is not None and body.id != id:
        raise RequestValidationError(
            [
                {
                    "type": "value_error",
                    "loc": ("body", "id"),
                    "msg": "must match the id in the path",
                    "input": body.id,
                }
            ]
        )
    tenant = acting_tenant(request, path_tenant, body.tenant)
    item = ContactWithId(id=id, **body.model_dump(exclude={"id", "tenant"}), tenant=tenant)
    rows = await _upsert(pool(request), [item], [tenant])
    if not rows:  # a concurrent writer committed after our snapshot
        row = await pool(request).fetchrow(db.q("api_get_contact"), tenant, id)
        assert row is not None
        return json({**_contact(row), "changed": False})
    return json({**_contact(rows[0]), "changed": rows[0]["changed"]})


async def batch(request: Request, body: BatchIn, path_tenant: str | None) -> Response:
    items = body.contacts
    tenants = [
        acting_tenant(request, path_tenant, c.tenant, f"contacts[{i}]") for i, c in enumerate(items)
    ]
    dups = duplicate_ids(list(zip(tenants, (c.id for c in items), strict=True)))
    if dups:
        raise RequestValidationError(
            [
                {
                    "type": "value_error",
                    "loc": ("body", "contacts", i, "id"),
                    "msg": f"duplicate id {key[1]!r} in batch (first at index {first})",
                    "input": key[1],
                }
                for i, key, first in dups
            ]
        )
    rows = await _upsert(pool(request), items, tenants)
    BATCHES.inc()
    by_key = {(r["tenant"], r["id"]): r for r in rows}
    out = []
    for c, tenant in zip(items, tenants, strict=True):
        r = by_key.get((tenant, c.id))
        out.append(
            {
                "id": c.id,
                "tenant": tenant,
                "version": r["version"] if r is not None else None,
                "changed": bool(r["changed"]) if r is not None else False,
            }
        )
    return json(
        {"count": len(out), "changed": sum(1 for o in out if o["changed"]), "contacts": out}
    )


async def delete_contact(request: Request, id: str, path_tenant: str | None) -> Response:
    tenant = reading_tenant(request, path_tenant)
    row = await pool(request).fetchrow(db.q("api_soft_delete_contact"), tenant, id)
    if row is None:
        raise HTTPException(404, detail=not_found({"id": id}))
    if row["changed"]:
        CONTACTS_DELETED.inc()
    return json({**_contact(row), "changed": row["changed"]})


async def get_contact(request: Request, id: str, path_tenant: str | None) -> Response:
    tenant = reading_tenant(request, path_tenant)
    async with pool(request).acquire() as conn:
        row = await conn.fetchrow(db.q("api_get_contact"), tenant, id)
        if row is None:
            raise HTTPException(404, detail=not_found({"id": id}))
        sync = await conn.fetch(db.q("api_contact_sync_state"), tenant, id)
    return json({**_contact(row), "sync": [dict(s) for s in sync]})


def register(app: FastAPI) -> None:
    """The contact routes, on ``/v1/contacts`` and ``/v1/tenants/{tenant}/contacts``."""
    writer, reader = role("writer"), role("reader")
    written = {**_REFUSALS, **_CONFLICT}
    tags: list[str | Enum] = ["contacts"]

    @app.put(
        "/v1/contacts/{id}",
        openapi_extra=writer,
        response_model=models.ContactWritten,
        responses=written,
        tags=tags,
    )
    async def put(id: ContactIdPath, body: ContactPut, request: Request) -> Response:
        """Create or update a contact of the key's tenant (an admin key: of the body's
        `tenant`, else `default`)."""
        return await put_contact(request, id, body, None)

    @app.put(
        "/v1/tenants/{tenant}/contacts/{id}",
        openapi_extra=writer,
        response_model=models.ContactWritten,
        responses=written,
        tags=tags,
    )
    async def put_in(
        tenant: TenantPath, id: ContactIdPath, body: ContactPut, request: Request
    ) -> Response:
        """Create or update a contact of `tenant`."""
        return await put_contact(request, id, body, tenant)

    @app.post(
        "/v1/contacts:batch",
        openapi_extra=writer,
        response_model=models.BatchWritten,
        responses=written,
        tags=tags,
    )
    async def post_batch(body: BatchIn, request: Request) -> Response:
        """Up to 1000 contacts in one transaction, all or none."""
        return await batch(request, body, None)

    @app.post(
        "/v1/tenants/{tenant}/contacts:batch",
        openapi_extra=writer,
        response_model=models.BatchWritten,
        responses=written,
        tags=tags,
    )
    async def post_batch_in(tenant: TenantPath, body: BatchIn, request: Request) -> Response:
        """Up to 1000 contacts of `tenant` in one transaction, all or none."""
        return await batch(request, body, tenant)

    @app.delete(
        "/v1/contacts/{id}",
        openapi_extra=writer,
        response_model=models.ContactWritten,
        responses={**written, **_NOT_FOUND},
        tags=tags,
    )
    async def delete(id: ContactIdPath, request: Request) -> Response:
        """Soft-delete a contact of the key's tenant (an admin key: of `default`)."""
        return await delete_contact(request, id, None)

    @app.delete(
        "/v1/tenants/{tenant}/contacts/{id}",
        openapi_extra=writer,
        response_model=models.ContactWritten,
        responses={**written, **_NOT_FOUND},
        tags=tags,
    )
    async def delete_in(tenant: TenantPath, id: ContactIdPath, request: Request) -> Response:
        """Soft-delete a contact of `tenant`."""
        return await delete_contact(request, id, tenant)

    @app.get(
        "/v1/contacts/{id}",
        openapi_extra=reader,
        response_model=models.ContactWithSync,
        responses={**_REFUSALS, **_NOT_FOUND},
        tags=tags,
    )
    async def get(id: ContactIdPath, request: Request) -> Response:
        """A contact of the key's tenant (an admin key: of `default`) with its sync state."""
        return await get_contact(request, id, None)

    @app.get(
        "/v1/tenants/{tenant}/contacts/{id}",
        openapi_extra=reader,
        response_model=models.ContactWithSync,
        responses={**_REFUSALS, **_NOT_FOUND},
        tags=tags,
    )
    async def get_in(tenant: TenantPath, id: ContactIdPath, request: Request) -> Response:
        """A contact of `tenant` with its sync state per connection."""
        return await get_contact(request, id, tenant)
