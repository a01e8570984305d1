"""The HTTP API against a real PostgreSQL (fresh database per test)."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import asyncpg
import httpx
import pytest

from crmsync import apikeys, connections
from crmsync.api.app import serve
from crmsync.settings import Settings
from support import OpenApi, add_connections, connection

KEY = "test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture
async def api(api_client: OpenApi) -> httpx.AsyncClient:
    return await api_client(api_keys=f"other-key, {KEY}")


def _locs(resp: httpx.Response) -> list[list[Any]]:
    assert resp.status_code == 422, resp.text
    return [e["loc"] for e in resp.json()["detail"]]


async def _outbox(pg: asyncpg.Connection[Any]) -> list[tuple[Any, ...]]:
    rows = await pg.fetch("SELECT contact_id, op, version FROM outbox ORDER BY id")
    return [tuple(r) for r in rows]


ROUTES = [
    ("PUT", "/v1/contacts/x"),
    ("GET", "/v1/contacts/x"),
    ("DELETE", "/v1/contacts/x"),
    ("POST", "/v1/contacts:batch"),
    ("GET", "/v1/connections"),
    ("GET", "/v1/status"),
]
BAD_AUTH: list[dict[str, str]] = [
    {},
    {"Authorization": "Bearer wrong"},
    {"Authorization": f"Basic {KEY}"},
    {"Authorization": "Bearer "},
    {"Authorization": f"Bearer {KEY}x"},
]


async def test_protected_routes_need_a_valid_key(
    api: httpx.AsyncClient, pg: asyncpg.Connection[Any]
) -> None:
    for method, path in ROUTES:
        for headers in BAD_AUTH:
            # A malformed body must not be parsed before the key is checked.
            resp = await api.request(method, path, headers=headers, content=b"{not json")
            assert resp.status_code == 401, (method, path, headers)
            assert resp.headers["www-authenticate"] == "Bearer"
        good = await api.request(method, path, headers=AUTH, content=b"{not json")
        assert good.status_code != 401, (method, path)
    # Both configured keys are accepted.
    other = {"Authorization": "Bearer other-key"}
    resp = await api.put("/v1/contacts/k", json={"email": "k@x.io"}, headers=other)
    assert resp.status_code == 200
    assert await pg.fetchval("SELECT count(*) FROM outbox") == 1


async def test_no_configured_keys_fails_closed(api_client: OpenApi) -> None:
    client = await api_client(api_keys=" , ")
    resp = await client.get("/v1/connections", headers={"Authorization": "Bearer "})
    assert resp.status_code == 401
    resp = await client.get("/v1/connections", headers={"Authorization": "Bearer x"})
    assert resp.status_code == 401
    assert (await client.get("/healthz")).status_code == 200


async def test_health_needs_no_key_and_metrics_do_unless_public(
    api: httpx.AsyncClient, api_client: OpenApi
) -> None:
    assert (await api.get("/healthz")).json() == {
        "status": "ok",
        "postgresql": "ok",
        "redis": "ok",
    }
    await api.put("/v1/contacts/m1", json={"email": "m@x.io"}, headers=AUTH)
    assert (await api.get("/metrics")).status_code == 401
    metrics = await api.get("/metrics", headers=AUTH)
    assert metrics.status_code == 200
    assert 'crmsync_api_contacts_written_total{result="changed"}' in metrics.text
    public = await api_client(metrics_public=True)
    assert (await public.get("/metrics")).status_code == 200
    assert (await public.get("/v1/status")).status_code == 401


async def test_put_creates_then_identical_put_is_a_noop(
    api: httpx.AsyncClient, pg: asyncpg.Connection[Any]
) -> None:
    body = {"email": "ann@x.io", "first_name": "Ann", "company": "Acme", "status": "lead"}
    first = await api.put("/v1/contacts/ann", json=body, headers=AUTH)
    assert first.status_code == 200
    data = first.json()
    assert (data["id"], data["version"], data["changed"], data["tenant"]) == (
        "ann",
        1,
        True,
        "default",
    )
    again = await api.put("/v1/contacts/ann", json={**body, "id": "ann"}, headers=AUTH)
    assert (again.json()["version"], again.json()["changed"]) == (1, False)
    assert await _outbox(pg) == [("ann", "insert", 1)]

    changed = await api.put("/v1/contacts/ann", json={**body, "status": "customer"}, headers=AUTH)
    assert (changed.json()["version"], changed.json()["status"]) == (2, "customer")
    assert await _outbox(pg) == [("ann", "insert", 1), ("ann", "update", 2)]


@pytest.mark.parametrize(
    ("path", "body", "loc"),
    [
        ("/v1/contacts/x", {"email": "not-an-email"}, ["body", "email"]),
        ("/v1/contacts/x", {"first_name": "Ann"}, ["body", "email"]),
        ("/v1/contacts/x", {"email": "a@x.io", "first_name": "f" * 101}, ["body", "first_name"]),
        ("/v1/contacts/x", {"email": "a@x.io", "company": "c" * 256}, ["body", "company"]),
        ("/v1/contacts/x", {"email": "a@x.io", "status": "vip"}, ["body", "status"]),
        ("/v1/contacts/x", {"email": "a@x.io", "tenant": "a b"}, ["body", "tenant"]),
        ("/v1/contacts/x", {"email": "a@x.io", "id": "y"}, ["body", "id"]),
        ("/v1/contacts/x", {"email": "a@x.io", "colour": "red"}, ["body", "colour"]),
        ("/v1/contacts/a%20b", {"email": "a@x.io"}, ["path", "id"]),
        ("/v1/contacts/" + "x" * 65, {"email": "a@x.io"}, ["path", "id"]),
    ],
)
async def test_put_validation_names_the_field(
    api: httpx.AsyncClient, pg: asyncpg.Connection[Any], path: str, body: Any, loc: list[Any]
) -> None:
    resp = await api.put(path, json=body, headers=AUTH)
    assert _locs(resp) == [loc]
    assert await pg.fetchval("SELECT count(*) FROM contacts") == 0
    assert await pg.fetchval("SELECT count(*) FROM outbox") == 0


async def test_batch_of_1000_is_one_transaction(
    api: httpx.AsyncClient, pg: asyncpg.Connection[Any]
) -> None:
    contacts = [
        {"id": f"c{i:04d}", "email": f"c{i}@x.io", "last_name": f"L{i}"} for i in range(1000)
    ]
    resp = await api.post("/v1/contacts:batch", json={"contacts": contacts}, headers=AUTH)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert (body["count"], body["changed"]) == (1000, 1000)
    assert [c["id"] for c in body["contacts"]] == [c["id"] for c in contacts]
    # Every row and every outbox row was written by one transaction.
    assert await pg.fetchval("SELECT count(DISTINCT xmin::text) FROM contacts") == 1
    assert await pg.fetchval("SELECT count(*) FROM contacts") == 1000
    assert (
        await pg.fetchval(
            "SELECT count(*) FROM outbox o JOIN contacts c ON c.id = o.contact_id "
            "WHERE o.xmin::text = c.xmin::text AND o.op = 'insert' AND o.version = 1"
        )
        == 1000
    )

    # Re-sending identical contacts: no new version, no outbox row.
    contacts[7]["last_name"] = "Changed"
    again = await api.post("/v1/contacts:batch", json={"contacts": contacts}, headers=AUTH)
    assert again.json()["changed"] == 1
    assert again.json()["contacts"][7] == {
        "id": "c0007",
        "tenant": "default",
        "version": 2,
        "changed": True,
    }
    assert again.json()["contacts"][8] == {
        "id": "c0008",
        "tenant": "default",
        "version": 1,
        "changed": False,
    }
    assert await pg.fetchval("SELECT count(*) FROM outbox") == 1001


async def test_bad_items_reject_the_whole_batch(
    api: httpx.AsyncClient, pg: asyncpg.Connection[Any]
) -> None:
    contacts: list[dict[str, Any]] = [{"id": f"c{i}", "email": f"c{i}@x.io"} for i in range(1000)]
    contacts[3]["email"] = "broken"
    contacts[999]["status"] = "vip"
    resp = await api.post("/v1/contacts:batch", json={"contacts": contacts}, headers=AUTH)
    assert _locs(resp) == [["body", "contacts", 3, "email"], ["body", "contacts", 999, "status"]]
    assert await pg.fetchval("SELECT count(*) FROM contacts") == 0
    assert await pg.fetchval("SELECT count(*) FROM outbox") == 0


async def test_batch_limits_and_duplicate_ids(
    api: httpx.AsyncClient, pg: asyncpg.Connection[Any]
) -> None:
    many = [{"id": f"c{i}", "email": f"c{i}@x.io"} for i in range(1001)]
    resp = await api.post("/v1/contacts:batch", json={"contacts": many}, headers=AUTH)
    assert _locs(resp) == [["body", "contacts"]]
    assert _locs(await api.post("/v1/contacts:batch", json={"contacts": []}, headers=AUTH)) == [
        ["body", "contacts"]
    ]
    dups = [
        {"id": "a", "email": "a@x.io"},
        {"id": "b", "email": "b@x.io"},
        {"id": "a", "email": "c@x.io"},
    ]
    resp = await api.post("/v1/contacts:batch", json={"contacts": dups}, headers=AUTH)
    assert _locs(resp) == [["body", "contacts", 2, "id"]]
    assert "first at index 0" in resp.json()["detail"][0]["msg"]
    assert await pg.fetchval("SELECT count(*) FROM contacts") == 0


async def test_delete_is_a_captured_soft_delete(
    api: httpx.AsyncClient, pg: asyncpg.Connection[Any]
) -> None:
    assert (await api.delete("/v1/contacts/ghost", headers=AUTH)).status_code == 404
    await api.put("/v1/contacts/d1", json={"email": "d@x.io"}, headers=AUTH)
    gone = await api.delete("/v1/contacts/d1", headers=AUTH)
    assert gone.status_code == 200
    assert (gone.json()["changed"], gone.json()["version"]) == (True, 2)
    assert gone.json()["deleted_at"] is not None
    twice = await api.delete("/v1/contacts/d1", headers=AUTH)
    assert (twice.json()["changed"], twice.json()["version"]) == (False, 2)
    assert await _outbox(pg) == [("d1", "insert", 1), ("d1", "delete", 2)]

    # A PUT revives a soft-deleted contact.
    back = await api.put("/v1/contacts/d1", json={"email": "d@x.io"}, headers=AUTH)
    assert (back.json()["changed"], back.json()["version"], back.json()["deleted_at"]) == (
        True,
        3,
        None,
    )
    assert (await _outbox(pg))[-1] == ("d1", "update", 3)


async def test_get_contact_with_sync_state(
    api: httpx.AsyncClient, pg: asyncpg.Connection[Any]
) -> None:
    assert (await api.get("/v1/contacts/nobody", headers=AUTH)).status_code == 404
    await api.put("/v1/contacts/g1", json={"email": "g@x.io", "last_name": "G"}, headers=AUTH)
    await add_connections(
        pg,
        [
            connection("sf", "salesforce", account="acme"),
            connection("hs", "hubspot", account="acme"),
        ],
    )
    await pg.execute(
        "INSERT INTO sync_state (connection_id, contact_id, external_id, synced_version, status, "
        "attempts, last_error, rule) VALUES ('sf', 'g1', '003XYZ', 1, 'synced', 1, NULL, NULL), "
        "('hs', 'g1', NULL, NULL, 'skipped', 0, NULL, 'hubspot.create.has_company')"
    )
    resp = await api.get("/v1/contacts/g1", headers=AUTH)
    assert resp.status_code == 200
    data = resp.json()
    assert (data["id"], data["email"], data["last_name"], data["version"]) == (
        "g1",
        "g@x.io",
        "G",
        1,
    )
    sync = {s["connection_id"]: s for s in data["sync"]}
    assert set(sync) == {"sf", "hs"}
    assert sync["sf"]["external_id"] == "003XYZ"
    assert sync["sf"]["synced_version"] == 1
    assert sync["hs"]["status"] == "skipped"
    assert sync["hs"]["rule"] == "hubspot.create.has_company"
    assert set(sync["sf"]) == {
        "connection_id",
        "status",
        "external_id",
        "synced_version",
        "attempts",
        "last_error",
        "rule",
        "updated_at",
    }


async def test_connections_and_status(api: httpx.AsyncClient, pg: asyncpg.Connection[Any]) -> None:
    token = "sk-live-0123456789abcdef-a1b2"
    await add_connections(
        pg, [connection("sf", "salesforce", account="acme", token=token, per_second=100)]
    )
    await connections.pause(pg, "sf", "paused by operator")
    await pg.execute(
        "INSERT INTO sync_state (connection_id, contact_id, status) VALUES "
        "('sf', 'a', 'synced'), ('sf', 'b', 'synced'), ('sf', 'c', 'dead')"
    )
    await pg.execute(
        "INSERT INTO dead_letters (connection_id, contact_id, operation, error) "
        "VALUES ('sf', 'c', 'create', 'boom')"
    )
    resp = await api.get("/v1/connections", headers=AUTH)
    assert resp.status_code == 200
    assert token not in resp.text
    (conn,) = resp.json()["connections"]
    assert conn["token"] == "…a1b2"
    assert (conn["id"], conn["paused"], conn["rate_limits"]) == (
        "sf",
        True,
        [{"limit": 100, "window_ms": 1000}],
    )
    status = (await api.get("/v1/status", headers=AUTH)).json()
    (s,) = status["connections"]
    assert s["sync"] == {"synced": 2, "dead": 1}
    assert s["dead_letters"] == 1
    assert s["paused_reason"] == "paused by operator"
    assert status["totals"]["dead_letters"] == 1


@pytest.mark.parametrize("content_type", [None, "application/x-www-form-urlencoded", "text/plain"])
async def test_bodies_are_json_whatever_their_label(
    api: httpx.AsyncClient, content_type: str | None
) -> None:
    # `curl -d '{"email": "bad"}'` labels the body as a form; it is still JSON.
    headers = dict(AUTH) | ({"Content-Type": content_type} if content_type else {})
    bad = await api.put("/v1/contacts/x", content=b'{"email": "bad"}', headers=headers)
    assert _locs(bad) == [["body", "email"]]
    assert bad.json()["detail"][0]["msg"] == "not a valid email address"
    ok = await api.put("/v1/contacts/x", content=b'{"email": "a@x.io"}', headers=headers)
    assert ok.status_code == 200


@pytest.mark.parametrize("handle_signals", [True, False])
async def test_serve_answers_then_stops_on_cancel(database_url: str, handle_signals: bool) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    settings = Settings(database_url=database_url, api_keys=KEY, api_port=port)
    task = asyncio.create_task(serve(settings, handle_signals=handle_signals))
    url = f"http://127.0.0.1:{port}"
    async with httpx.AsyncClient(base_url=url) as client:
        for _ in range(100):
            try:
                health = await client.get("/healthz")
                break
            except httpx.ConnectError:
                await asyncio.sleep(0.05)
        assert health.json()["status"] == "ok"
        assert (await client.put("/v1/contacts/x", json={"email": "a@x.io"})).status_code == 401
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        with pytest.raises(httpx.ConnectError):
            await client.get("/healthz")


# (key, method, path, body tenant) -> status: which tenant a write acts on, and the
# 409 for a body naming another one (nothing written then).
TENANT_CASES = [
    ("admin", "/v1/contacts/t1", None, 200, "default"),
    ("admin", "/v1/contacts/t1", "acme", 200, "acme"),
    ("admin", "/v1/tenants/acme/contacts/t1", None, 200, "acme"),
    ("admin", "/v1/tenants/acme/contacts/t1", "acme", 200, "acme"),
    ("admin", "/v1/tenants/acme/contacts/t1", "beta", 409, None),
    ("acme", "/v1/contacts/t1", None, 200, "acme"),
    ("acme", "/v1/contacts/t1", "acme", 200, "acme"),
    ("acme", "/v1/contacts/t1", "default", 409, None),
    ("acme", "/v1/tenants/acme/contacts/t1", "beta", 409, None),
]


@pytest.mark.parametrize(("who", "path", "body_tenant", "status", "lands_in"), TENANT_CASES)
async def test_the_tenant_a_write_acts_on(
    api_client: OpenApi,
    pg: asyncpg.Connection[Any],
    who: str,
    path: str,
    body_tenant: str | None,
    status: int,
    lands_in: str | None,
) -> None:
    _, acme = await apikeys.create(pg, role="writer", tenant="acme")
    key = {"admin": KEY, "acme": acme}[who]
    body: dict[str, Any] = {"email": "t@x.io"} | ({"tenant": body_tenant} if body_tenant else {})
    client = await api_client()
    resp = await client.put(path, json=body, headers={"Authorization": f"Bearer {key}"})
    assert resp.status_code == status, resp.text
    rows = [tuple(r) for r in await pg.fetch("SELECT tenant, id FROM contacts")]
    if lands_in is None:
        acting = "acme" if who == "acme" or "/tenants/acme/" in path else "default"
        assert f"tenant {body_tenant!r}" in resp.json()["detail"]
        assert f"tenant {acting!r}" in resp.json()["detail"]
        assert rows == [] and await _outbox(pg) == []
    else:
        assert rows == [(lands_in, "t1")] and resp.json()["tenant"] == lands_in


async def test_an_admin_batch_may_hold_the_same_id_in_two_tenants(
    api: httpx.AsyncClient, pg: asyncpg.Connection[Any]
) -> None:
    contacts = [
        {"id": "x", "email": "a@x.io", "tenant": "acme"},
        {"id": "x", "email": "b@x.io", "tenant": "beta"},
        {"id": "x", "email": "d@x.io"},
    ]
    resp = await api.post("/v1/contacts:batch", json={"contacts": contacts}, headers=AUTH)
    assert resp.status_code == 200, resp.text
    assert [(c["tenant"], c["changed"]) for c in resp.json()["contacts"]] == [
        ("acme", True),
        ("beta", True),
        ("default", True),
    ]
    again = [*contacts, {"id": "x", "email": "e@x.io", "tenant": "beta"}]
    dup = await api.post("/v1/contacts:batch", json={"contacts": again}, headers=AUTH)
    assert _locs(dup) == [["body", "contacts", 3, "id"]]
    rows = await pg.fetch("SELECT tenant, email FROM contacts ORDER BY tenant")
    assert [tuple(r) for r in rows] == [
        ("acme", "a@x.io"),
        ("beta", "b@x.io"),
        ("default", "d@x.io"),
    ]
