"""Every key kind, every endpoint, a resource of its own tenant or of another.

Generated from two tables, not written case by case: ``KEYS`` (admin, tenant
writer, tenant reader, another tenant's writer, no key, revoked key) and
``ENDPOINTS`` (each route, with how it names the tenant it acts on). ``expected``
derives each case's status from the rules. For every case, against the real API
app, PostgreSQL and Redis:

- the status is the expected one, and a success answers the declared model;
- a refusal changes nothing (PostgreSQL and Redis compared before and after);
- a tenant key never changes another tenant's rows, and never receives another
  tenant's data (its contacts' emails, connection ids, dead-letter errors).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import httpx
import pytest
import redis.asyncio as aioredis
from pydantic import BaseModel

from crmsync import apikeys, connections, db, vault
from crmsync.api import models
from crmsync.api.app import create_app
from crmsync.settings import Settings
from support import asgi_client

TENANTS = ("acme", "beta")
OWN, OTHER = TENANTS


def markers(tenant: str) -> tuple[str, ...]:
    """Strings only ``tenant``'s data holds: seeing one is seeing its data."""
    return (f"@{tenant}.example", f"{tenant}-sf", f"{tenant}-boom")


def only(tenant: str) -> str:
    """A contact id that exists in ``tenant`` alone."""
    return f"{tenant}-only"


@dataclass(frozen=True)
class Key:
    name: str
    role: str | None  # None: no key at all
    tenant: str | None
    revoked: bool = False


KEYS = [
    Key("admin", "admin", None),
    Key("writer", "writer", OWN),
    Key("reader", "reader", OWN),
    Key("other-tenant", "writer", OTHER),
    Key("no-key", None, None),
    Key("revoked", "writer", OWN, revoked=True),
]
RANK = {"reader": 0, "writer": 1, "admin": 2}


@dataclass(frozen=True)
class Endpoint:
    name: str
    method: str
    path: Callable[[str], str]  # resource tenant -> path (with query)
    role: str
    ok: int
    # How the request names the tenant it acts on:
    #   path / body / query: names the resource tenant explicitly;
    #   legacy: names none (acts on the key's tenant, admin: `default`);
    #   none: a listing or scrape of whatever the key may see.
    names: str
    body: Callable[[str], Any] | None = None
    model: type[BaseModel] | None = None
    needs_existing: bool = False  # legacy: the contact must exist in the acting tenant
    shows_own: bool = False  # a tenant key's success lists its own tenant's data
    keys_of: bool = False  # acts on API keys (of the resource tenant)


def _contact_body(tenant: str | None) -> dict[str, Any]:
    body: dict[str, Any] = {"email": "written@nowhere.example", "last_name": "W"}
    if tenant is not None:
        body["tenant"] = tenant
    return body


ENDPOINTS = [
    Endpoint("put by path", "PUT", lambda t: f"/v1/tenants/{t}/contacts/{only(t)}", "writer", 200,
             "path", lambda t: _contact_body(None), models.ContactWritten),
    Endpoint("put naming tenant in body", "PUT", lambda t: f"/v1/contacts/{only(t)}", "writer",
             200, "body", _contact_body, models.ContactWritten),
    Endpoint("put without tenant", "PUT", lambda t: f"/v1/contacts/{only(t)}", "writer", 200,
             "legacy", lambda t: _contact_body(None), models.ContactWritten),
    Endpoint("batch by path", "POST", lambda t: f"/v1/tenants/{t}/contacts:batch", "writer", 200,
             "path", lambda t: {"contacts": [{"id": only(t), **_contact_body(None)}]},
             models.BatchWritten),
    Endpoint("batch naming tenant in body", "POST", lambda t: "/v1/contacts:batch", "writer", 200,
             "body", lambda t: {"contacts": [{"id": only(t), **_contact_body(t)}]},
             models.BatchWritten),
    Endpoint("get by path", "GET", lambda t: f"/v1/tenants/{t}/contacts/{only(t)}", "reader",
             200, "path", None, models.ContactWithSync),
    Endpoint("get without tenant", "GET", lambda t: f"/v1/contacts/{only(t)}", "reader", 200,
             "legacy", None, models.ContactWithSync, needs_existing=True),
    Endpoint("delete by path", "DELETE", lambda t: f"/v1/tenants/{t}/contacts/{only(t)}",
             "writer", 200, "path", None, models.ContactWritten),
    Endpoint("delete without tenant", "DELETE", lambda t: f"/v1/contacts/{only(t)}", "writer",
             200, "legacy", None, models.ContactWritten, needs_existing=True),
    Endpoint("connections of a tenant", "GET", lambda t: f"/v1/connections?tenant={t}", "reader",
             200, "query", None, models.Connections, shows_own=True),
    Endpoint("connections", "GET", lambda t: "/v1/connections", "reader", 200, "none", None,
             models.Connections, shows_own=True),
    Endpoint("status of a tenant", "GET", lambda t: f"/v1/status?tenant={t}", "reader", 200,
             "query", None, models.StatusReport, shows_own=True),
    Endpoint("status", "GET", lambda t: "/v1/status", "reader", 200, "none", None,
             models.StatusReport, shows_own=True),
    Endpoint("dead letters of a connection", "GET",
             lambda t: f"/v1/dead-letters?connection={t}-sf", "reader", 200, "query", None,
             models.DeadLetters, shows_own=True),
    Endpoint("dead letters", "GET", lambda t: "/v1/dead-letters", "reader", 200, "none", None,
             models.DeadLetters, shows_own=True),
    Endpoint("replay dead letters", "POST", lambda t: "/v1/dead-letters/replay", "writer", 200,
             "query", lambda t: {"connection": f"{t}-sf"}, models.Replayed),
    Endpoint("replay all dead letters", "POST", lambda t: "/v1/dead-letters/replay", "writer",
             200, "none", lambda t: {"all": True}, models.Replayed),
    Endpoint("purge dead letters", "POST", lambda t: "/v1/dead-letters/purge", "writer", 200,
             "query", lambda t: {"connection": f"{t}-sf"}, models.Purged),
    Endpoint("purge all dead letters", "POST", lambda t: "/v1/dead-letters/purge", "writer",
             200, "none", lambda t: {"all": True}, models.Purged),
    Endpoint("pause", "POST", lambda t: f"/v1/connections/{t}-sf/pause", "admin", 200, "query",
             None, models.Paused),
    Endpoint("resume", "POST", lambda t: f"/v1/connections/{t}-sf/resume", "admin", 200,
             "query", None, models.Paused),
    Endpoint("series of a connection", "GET", lambda t: f"/v1/series?connection={t}-sf",
             "reader", 200, "query", None, models.Series),
    Endpoint("series", "GET", lambda t: "/v1/series", "reader", 200, "none", None,
             models.Series),
    Endpoint("lookup", "GET", lambda t: f"/v1/contacts:lookup?q={only(t)}", "reader", 200,
             "none", None, models.Lookup),
    Endpoint("lookup of an id both tenants use", "GET", lambda t: "/v1/contacts:lookup?q=same",
             "reader", 200, "none", None, models.Lookup, shows_own=True),
    Endpoint("metrics", "GET", lambda t: "/metrics", "reader", 200, "none", shows_own=True),
    Endpoint("list keys", "GET", lambda t: f"/v1/keys?tenant={t}", "admin", 200, "query", None,
             models.ApiKeys, keys_of=True),
    Endpoint("create key", "POST", lambda t: "/v1/keys", "admin", 201, "body",
             lambda t: {"role": "reader", "tenant": t}, models.ApiKeyCreated, keys_of=True),
    Endpoint("revoke key", "DELETE", lambda t: f"/v1/keys/{EXTRA_KEY_IDS[t]}", "admin", 200,
             "path", None, models.ApiKey, keys_of=True),
]  # fmt: skip
EXTRA_KEY_IDS: dict[str, str] = {}  # tenant -> id of a spare key of that tenant


def acting(key: Key, ep: Endpoint, tenant: str) -> str:
    """The tenant a request acts on (``*``: every tenant, an admin's unnamed request)."""
    if ep.names == "legacy":
        return key.tenant or "default"
    if ep.names == "none":
        return key.tenant or "*"
    return tenant


def expected(key: Key, ep: Endpoint, tenant: str) -> int:
    if key.role is None or key.revoked:
        return 401
    if RANK[key.role] < RANK[ep.role]:
        return 403
    foreign = key.tenant is not None and key.tenant != tenant
    if foreign and ep.names in ("path", "body"):
        return 409 if ep.method != "GET" else 404
    if foreign and ep.names == "query":
        return 404
    if ep.names == "legacy" and ep.needs_existing and acting(key, ep, tenant) != tenant:
        return 404  # the id exists in `tenant` only: not found where the request looks
    return ep.ok


@dataclass
class World:
    client: httpx.AsyncClient
    pg: asyncpg.Pool[Any]
    redis: aioredis.Redis
    keys: dict[str, str] = field(default_factory=dict)  # Key.name -> bearer key


SEED_KEYS = "SELECT id FROM api_keys"


async def seed(w: World, secret: vault.Keyring) -> None:
    """Both tenants' data, fresh: contacts, a connection, ledger, dead letters."""
    await w.pg.execute("TRUNCATE contacts, outbox, sync_state, dead_letters, connections CASCADE")
    await w.redis.flushdb()
    for t in TENANTS:
        await w.pg.executemany(
            "INSERT INTO contacts (tenant, id, email) VALUES ($1, $2, $3)",
            [(t, only(t), f"only@{t}.example"), (t, "same", f"same@{t}.example")],
        )
        spec = connections.parse_connection(
            id=f"{t}-sf", tenant=t, crm="salesforce", account=t, base_url="http://127.0.0.1:1",
            token=f"token-of-{t}-0123456789",
        )  # fmt: skip
        await connections.add(w.pg, spec, secret)
        await w.pg.execute(
            "INSERT INTO sync_state (connection_id, contact_id, external_id, synced_version, "
            "status, attempts) VALUES ($1, $2, '003X', 1, 'dead', 3)",
            f"{t}-sf",
            only(t),
        )
        await w.pg.execute(
            "INSERT INTO sync_state (connection_id, contact_id, external_id, synced_version, "
            "status, attempts, last_error) VALUES ($1, 'same', '003S', 1, 'retrying', 1, $2)",
            f"{t}-sf",
            f"{t}-boom",
        )
        await w.pg.execute(
            "INSERT INTO dead_letters (connection_id, contact_id, operation, error) "
            "VALUES ($1, 'same', 'update', $2)",
            f"{t}-sf",
            f"{t}-boom",
        )
        await w.pg.execute(
            "INSERT INTO dead_letters (connection_id, contact_id, operation, error) "
            "VALUES ($1, $2, 'update', $3)",
            f"{t}-sf",
            only(t),
            f"{t}-boom",
        )
    await w.pg.execute("DELETE FROM outbox")


async def reset_keys(w: World, seeded: list[str], revoked: str) -> None:
    await w.pg.execute("DELETE FROM api_keys WHERE NOT (id = ANY ($1::text[]))", seeded)
    await w.pg.execute("UPDATE api_keys SET revoked_at = NULL WHERE id <> $1", revoked)


async def snapshot(w: World) -> dict[str, Any]:
    """Everything a request could change, per tenant, plus Redis."""
    q = {
        "contacts": "SELECT tenant, id, email, last_name, version, deleted_at FROM contacts",
        "outbox": "SELECT tenant, contact_id, op, version FROM outbox",
        "sync_state": "SELECT k.tenant, s.connection_id, s.contact_id, s.status, s.attempts "
        "FROM sync_state s JOIN connections k ON k.id = s.connection_id",
        "dead_letters": "SELECT k.tenant, d.id, d.contact_id FROM dead_letters d "
        "JOIN connections k ON k.id = d.connection_id",
        "connections": "SELECT tenant, id, secrets, paused_reason FROM connections",
        "api_keys": "SELECT coalesce(tenant, '*admin*') AS tenant, id, role, revoked_at "
        "FROM api_keys",
    }
    out: dict[str, Any] = {}
    for name, sql in q.items():
        rows = [tuple(r) for r in await w.pg.fetch(sql)]
        out[name] = sorted(rows, key=repr)
    out["redis"] = sorted(
        [(k, await w.redis.zrange(k, 0, -1)) for k in await w.redis.keys("*")
         if (await w.redis.type(k)) == b"zset"],
        key=repr,
    )  # fmt: skip
    return out


def of_tenants(snap: dict[str, Any], tenants: set[str]) -> dict[str, Any]:
    """The rows of ``tenants`` only (Redis left out: its keys name connections)."""
    return {
        name: [r for r in rows if r[0] in tenants] for name, rows in snap.items() if name != "redis"
    }


@pytest.fixture
async def world(database_url: str, redis_url: str) -> AsyncIterator[World]:
    secret_text = vault.new_key()
    secret = vault.keyring(secret_text)
    settings = Settings(
        database_url=database_url,
        redis_url=redis_url,
        api_keys="",
        api_key_cache_seconds=0,  # a revoke is seen at once
        metrics_cache_seconds=0,
        secret_key=secret_text,
    )
    pool = await db.create_pool(database_url, min_size=1, max_size=6)
    redis = aioredis.from_url(redis_url)
    app = create_app(settings, pool=pool)
    try:
        async with asgi_client(app) as client:
            w = World(client, pool, redis)
            for k in KEYS:
                if k.role is not None:
                    row, w.keys[k.name] = await apikeys.create(pool, role=k.role, tenant=k.tenant)
                    if k.revoked:
                        await apikeys.revoke(pool, row["id"])
                        w.keys["revoked-id"] = row["id"]
            for t in TENANTS:
                row, _ = await apikeys.create(pool, role="reader", tenant=t)
                EXTRA_KEY_IDS[t] = row["id"]
            w.keys["seeded"] = ",".join(r["id"] for r in await pool.fetch(SEED_KEYS))
            await seed(w, secret)
            w.keys["secret"] = settings.secret_key
            yield w
    finally:
        await redis.aclose()
        await pool.close()


@pytest.mark.parametrize("key", KEYS, ids=[k.name for k in KEYS])
async def test_every_endpoint_for_every_key_and_tenant(world: World, key: Key) -> None:
    w = world
    secret = vault.keyring(w.keys["secret"])
    seeded = w.keys["seeded"].split(",")
    headers = {"Authorization": f"Bearer {w.keys[key.name]}"} if key.role else {}
    problems: list[str] = []
    for ep in ENDPOINTS:
        for tenant in TENANTS:
            await seed(w, secret)
            await reset_keys(w, seeded, w.keys["revoked-id"])
            before = await snapshot(w)
            path = ep.path(tenant)
            body = ep.body(tenant) if ep.body else None
            resp = await w.client.request(ep.method, path, json=body, headers=headers)
            after = await snapshot(w)
            case = f"{key.name} {ep.name} [{tenant}] {ep.method} {path}"
            want = expected(key, ep, tenant)
            if resp.status_code != want:
                problems.append(f"{case}: {resp.status_code} (want {want}) {resp.text[:200]}")
                continue
            if want >= 400:
                if after != before:
                    problems.append(f"{case}: refused with {want} but changed something")
            elif ep.model is not None:
                ep.model.model_validate(resp.json())
            if key.tenant is not None:
                others = set(TENANTS) - {key.tenant} | {"default", "*admin*"}
                if of_tenants(after, others) != of_tenants(before, others):
                    problems.append(f"{case}: changed another tenant's rows")
                asked = path + repr(body)
                for o in set(TENANTS) - {key.tenant}:
                    leaked = [m for m in markers(o) if m in resp.text and m not in asked]
                    if leaked:
                        problems.append(f"{case}: answer shows {o}'s data {leaked}")
                if want < 400 and ep.shows_own and f"{key.tenant}-sf" not in resp.text:
                    problems.append(f"{case}: answer lacks its own tenant's data")
            if want < 400 and not ep.keys_of and ep.method != "GET":
                # A write changes the tenant it acts on, and no other.
                untouched = set(TENANTS) | {"default"}
                on = acting(key, ep, tenant)
                untouched = set() if on == "*" else untouched - {on}
                if of_tenants(after, untouched) != of_tenants(before, untouched):
                    problems.append(f"{case}: a write changed a tenant it does not act on")
    assert not problems, "\n".join(problems)
