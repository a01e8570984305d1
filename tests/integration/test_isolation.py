"""Two tenants, each with its own keys and CRM account, end to end: the real API app,
relay and worker, real PostgreSQL and Redis, the mock CRMs over HTTP. Every
cross-tenant read and write is refused, no CRM record of the other tenant
changes, and no token is stored in clear anywhere in the database."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import asyncpg
import httpx
import pytest
import redis.asyncio as aioredis

from crmsync import apikeys, connections, db, vault
from crmsync.api.app import create_app
from crmsync.capture.relay import relay_once
from crmsync.processes import run_worker
from crmsync.queue.store import QueueStore
from crmsync.settings import Settings
from crmsync_lab.mock.config import AccountSpec, MockConfig
from crmsync_lab.mock.limits import Window
from crmsync_lab.mock.server import MockHandle, start_mock
from support import asgi_client

TENANTS = ("acme", "beta")


@dataclass
class Two:
    settings: Settings
    pool: asyncpg.Pool[Any]
    store: QueueStore
    mock: MockHandle
    api: httpx.AsyncClient
    keys: dict[str, str]  # "acme" / "beta" (writers), "acme-reader", "admin"

    def auth(self, who: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[who]}"}

    def crm(self, tenant: str) -> dict[str, dict[str, Any]]:
        """The tenant's Salesforce account: crmsync id -> record."""
        return {str(r["CrmSync_Id__c"]): r for r in self.mock.records("salesforce", tenant)}

    async def settle(self, check: Callable[[], bool], limit: float = 20.0) -> None:
        deadline = asyncio.get_running_loop().time() + limit
        while True:
            while await relay_once(self.pool, self.store, 1000):
                pass
            if check():
                return
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(
                    "the CRMs did not reach the expected state in time: "
                    f"{ {t: self.crm(t) for t in TENANTS} }"
                )
            await asyncio.sleep(0.1)


@contextlib.asynccontextmanager
async def worker(settings: Settings) -> AsyncIterator[None]:
    stop = asyncio.Event()
    task = asyncio.create_task(run_worker(settings, 20, stop))
    try:
        yield
    finally:
        stop.set()
        await asyncio.wait_for(task, 15)


@pytest.fixture
async def two(settings: Settings) -> AsyncIterator[Two]:
    s = settings.model_copy(update={"api_key_cache_seconds": 0, "api_keys": ""})
    mock = await start_mock(
        MockConfig(
            accounts=[AccountSpec("salesforce", t, limits=(Window(200, 1000),)) for t in TENANTS],
            latency_ms=1,
            jitter_ms=0,
        )
    )
    pool = await db.create_pool(s.database_url)
    redis = aioredis.from_url(s.redis_url)
    keyring = vault.keyring(s.secret_key)
    keys: dict[str, str] = {}
    for t in TENANTS:
        spec = connections.parse_connection(
            id=f"{t}-sf",
            tenant=t,
            crm="salesforce",
            account=t,
            base_url=mock.base_url("salesforce", t),
            token=mock.token("salesforce", t),
        )
        await connections.add(pool, spec, keyring)
        _, keys[t] = await apikeys.create(pool, role="writer", tenant=t)
    _, keys["acme-reader"] = await apikeys.create(pool, role="reader", tenant="acme")
    _, keys["admin"] = await apikeys.create(pool, role="admin", tenant=None)
    app = create_app(s, pool=pool)
    try:
        async with asgi_client(app) as api:
            yield Two(s, pool, QueueStore(redis), mock, api, keys)
    finally:
        await redis.aclose()
        await pool.close()
        await mock.close()


async def test_two_tenants_cannot_touch_each_other(two: Two) -> None:
    api = two.api
    async with worker(two.settings):
        # The same ids in both tenants are two contacts, each in its tenant's CRM.
        for t in TENANTS:
            batch = {
                "contacts": [
                    {"id": f"c{i}", "email": f"c{i}@{t}.example", "last_name": t} for i in range(5)
                ]
            }
            resp = await api.post("/v1/contacts:batch", json=batch, headers=two.auth(t))
            assert resp.status_code == 200, resp.text
        await two.settle(lambda: all(len(two.crm(t)) == 5 for t in TENANTS))
        acme_before = {k: dict(v) for k, v in two.crm("acme").items()}

        # beta tries every way at acme's contacts: each refused or kept in beta's tenant.
        tries: list[tuple[str, str, Any, set[int]]] = [
            ("PUT", "/v1/contacts/c1", {"email": "x@beta.example", "tenant": "acme"}, {409}),
            ("PUT", "/v1/tenants/acme/contacts/c1", {"email": "x@beta.example"}, {409}),
            ("POST", "/v1/tenants/acme/contacts:batch",
             {"contacts": [{"id": "c2", "email": "x@beta.example"}]}, {409}),
            ("POST", "/v1/contacts:batch",
             {"contacts": [{"id": "c9", "email": "x@beta.example", "tenant": "acme"}]}, {409}),
            ("DELETE", "/v1/tenants/acme/contacts/c3", None, {409}),
            ("GET", "/v1/tenants/acme/contacts/c1", None, {404}),
            ("GET", "/v1/status?tenant=acme", None, {404}),
            ("GET", "/v1/dead-letters?connection=acme-sf", None, {404}),
            ("POST", "/v1/dead-letters/replay", {"connection": "acme-sf"}, {404}),
            ("POST", "/v1/dead-letters/purge", {"connection": "acme-sf"}, {404}),
            ("GET", "/v1/contacts:lookup?q=c1@acme.example", None, {200}),
            ("GET", "/v1/series?connection=acme-sf", None, {404}),
            ("POST", "/v1/connections/acme-sf/pause", None, {403}),
            ("GET", "/v1/keys", None, {403}),
        ]  # fmt: skip
        for method, path, body, codes in tries:
            resp = await api.request(method, path, json=body, headers=two.auth("beta"))
            assert resp.status_code in codes, (method, path, resp.text)
        conflict = await api.put(
            "/v1/contacts/c1",
            json={"email": "x@beta.example", "tenant": "acme"},
            headers=two.auth("beta"),
        )
        assert "'acme'" in conflict.json()["detail"] and "'beta'" in conflict.json()["detail"]
        # What beta may do to its own c1 (the same id) stays in beta.
        assert (await api.delete("/v1/contacts/c1", headers=two.auth("beta"))).status_code == 200
        moved = await api.put(
            "/v1/contacts/c4",
            json={"email": "new@beta.example", "last_name": "B"},
            headers=two.auth("beta"),
        )
        assert moved.json()["tenant"] == "beta"
        # A reader of acme cannot write; acme's own writes still work.
        denied = await api.put(
            "/v1/contacts/c0", json={"email": "r@acme.example"}, headers=two.auth("acme-reader")
        )
        assert denied.status_code == 403
        ok = await api.put(
            "/v1/contacts/c0",
            json={"email": "c0-new@acme.example", "last_name": "A"},
            headers=two.auth("acme"),
        )
        assert ok.status_code == 200

        def beta_done() -> bool:
            beta = two.crm("beta")
            return "c1" not in beta and beta.get("c4", {}).get("Email") == "new@beta.example"

        await two.settle(
            lambda: beta_done() and two.crm("acme")["c0"]["Email"] == "c0-new@acme.example"
        )
    acme_after = two.crm("acme")
    assert set(acme_after) == set(acme_before) == {f"c{i}" for i in range(5)}
    for cid in ("c1", "c2", "c3", "c4"):
        assert acme_after[cid] == acme_before[cid], cid
    assert all(r["Email"].endswith("@acme.example") for r in acme_after.values())
    assert "c9" not in two.crm("acme") and "c9" not in two.crm("beta")
    # Reads: each key sees its own tenant's contact under the shared id.
    for t in TENANTS:
        got = await api.get("/v1/contacts/c2", headers=two.auth(t))
        assert got.json()["email"] == f"c2@{t}.example"
        assert {s["connection_id"] for s in got.json()["sync"]} == {f"{t}-sf"}
        listed = (await api.get("/v1/connections", headers=two.auth(t))).json()["connections"]
        assert [c["id"] for c in listed] == [f"{t}-sf"]
    await _no_token_in_clear(two)


async def _no_token_in_clear(two: Two) -> None:
    """Every table, every row, as text: no CRM token appears (not even its first half)."""
    tokens = [two.mock.token("salesforce", t) for t in TENANTS]
    tables = await two.pool.fetch(
        "SELECT quote_ident(table_name) AS t FROM information_schema.tables "
        "WHERE table_schema = 'public' AND table_type = 'BASE TABLE'"
    )
    assert len(tables) >= 8
    for row in tables:
        dump = "\n".join(r[0] for r in await two.pool.fetch(f"SELECT x::text FROM {row['t']} x"))
        for token in tokens:
            assert token not in dump, row["t"]
            assert token[: len(token) // 2 + 1] not in dump, row["t"]
