"""The operator endpoints behind the dashboard, /healthz and the figures of /metrics,
against real PostgreSQL and Redis (the app's lifespan runs, so the sampler too)."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import pytest
import redis.asyncio as aioredis
from fastapi.routing import APIRoute
from prometheus_client.parser import text_string_to_metric_families

from crmsync import apikeys, counters, db, timeseries
from crmsync.api import ops
from crmsync.api.app import create_app
from crmsync.capture import relay
from crmsync.capture.reconcile import reconcile
from crmsync.connections import Connection
from crmsync.queue import keys
from crmsync.queue.store import Band, QueueStore
from crmsync.ratelimit import RateWindow
from crmsync.settings import Settings
from crmsync_lab.harness.processes import free_port
from support import UNREACHABLE, add_connections, asgi_client

KEY = "test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture
async def pool(pool: asyncpg.Pool[Any]) -> asyncpg.Pool[Any]:
    """The test's pool, with three connections of two tenants."""
    p = pool
    day = 86_400_000
    limits: list[tuple[str, str, str, tuple[RateWindow, ...]]] = [
        ("acme-sf", "acme", "salesforce", (RateWindow(100, 1000),)),
        ("acme-hs", "acme", "hubspot", (RateWindow(100, 10_000), RateWindow(5000, day))),
        ("beta-sf", "beta", "salesforce", ()),
    ]
    await add_connections(
        p,
        [
            Connection(cid, tenant, crm, cid, UNREACHABLE, "secret-token-123456", windows)
            for cid, tenant, crm, windows in limits
        ],
    )
    return p


async def _app_client(
    pool: asyncpg.Pool[Any], settings: Settings
) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings, pool=pool)
    async with (
        app.router.lifespan_context(app),
        asgi_client(app) as c,
    ):
        yield c


@pytest.fixture
async def api(pool: asyncpg.Pool[Any], settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async for c in _app_client(pool, settings):
        yield c


ROUTES = [
    ("POST", "/v1/connections/acme-sf/pause"),
    ("POST", "/v1/connections/acme-sf/resume"),
    ("GET", "/v1/series"),
    ("GET", "/v1/dead-letters"),
    ("POST", "/v1/dead-letters/replay"),
    ("POST", "/v1/dead-letters/purge"),
    ("GET", "/v1/contacts:lookup?q=x"),
]


async def test_operator_routes_need_a_key_and_state_their_need(api: httpx.AsyncClient) -> None:
    for method, path in ROUTES:
        for headers in ({}, {"Authorization": "Bearer wrong"}):
            resp = await api.request(method, path, headers=headers, content=b"{not json")
            assert resp.status_code == 401, (method, path)
    # Each /v1 route of the module declares its need in one place (a require() dependency).
    needs = {}
    for route in ops.router.routes:
        assert isinstance(route, APIRoute)
        if route.path.startswith("/v1/"):
            declared = (getattr(d.call, "need", None) for d in route.dependant.dependencies)
            found = [n for n in declared if isinstance(n, ops.Need)]
            assert len(found) == 1, route.path
            needs[route.path] = found[0].role
    assert needs["/v1/series"] == "read"
    assert needs["/v1/dead-letters/purge"] == "write"
    assert needs["/v1/connections/{id}/pause"] == "admin"  # only admins manage connections


async def test_pause_and_resume(api: httpx.AsyncClient, pool: asyncpg.Pool[Any]) -> None:
    resp = await api.post(
        "/v1/connections/acme-sf/pause", json={"reason": "CRM maintenance"}, headers=AUTH
    )
    assert resp.status_code == 200, resp.text
    assert await pool.fetchval("SELECT paused_reason FROM connections WHERE id='acme-sf'") == (
        "CRM maintenance"
    )
    status = (await api.get("/v1/status", headers=AUTH)).json()
    sf = next(c for c in status["connections"] if c["id"] == "acme-sf")
    assert (sf["paused"], sf["paused_reason"]) == (True, "CRM maintenance")
    # No body: the default reason.
    assert (await api.post("/v1/connections/acme-hs/pause", headers=AUTH)).status_code == 200
    assert await pool.fetchval("SELECT paused_reason FROM connections WHERE id='acme-hs'") == (
        "paused by operator"
    )
    assert (await api.post("/v1/connections/acme-sf/resume", headers=AUTH)).status_code == 200
    assert await pool.fetchval("SELECT paused_reason FROM connections WHERE id='acme-sf'") is None
    missing = await api.post("/v1/connections/nope/resume", headers=AUTH)
    assert missing.status_code == 404 and "nope" in missing.json()["detail"]
    long = await api.post("/v1/connections/acme-sf/pause", json={"reason": "x" * 501}, headers=AUTH)
    assert long.status_code == 422 and long.json()["detail"][0]["loc"] == ["body", "reason"]


async def _dead(pool: asyncpg.Pool[Any]) -> None:
    await pool.execute(
        "INSERT INTO contacts (id, tenant, email, last_name) VALUES"
        " ('c1', 'acme', 'Ann@Example.com', 'Lee'), ('c2', 'acme', 'bob@example.com', 'Bo')"
    )
    await pool.execute("DELETE FROM outbox")
    await pool.executemany(
        "INSERT INTO sync_state (connection_id, contact_id, external_id, synced_version, status,"
        " attempts, last_error) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        [
            ("acme-sf", "c1", None, None, "dead", 1, "INVALID_EMAIL_ADDRESS: bad"),
            ("acme-hs", "c1", "H1", 1, "synced", 0, None),
            ("acme-sf", "c2", None, None, "dead", 3, "503"),
        ],
    )
    await pool.executemany(
        "INSERT INTO dead_letters (connection_id, contact_id, version, operation, error_code,"
        " error, http_status, payload, attempts) VALUES ($1, $2, 1, 'create', $3, $4, $5,"
        " '{}'::jsonb, $6)",
        [
            ("acme-sf", "c1", "INVALID_EMAIL_ADDRESS", "Email: invalid email address", 400, 1),
            ("acme-sf", "c2", None, "Service Unavailable", 503, 3),
        ],
    )


async def test_dead_letters_list_replay_purge(
    api: httpx.AsyncClient, pool: asyncpg.Pool[Any], redis_client: aioredis.Redis
) -> None:
    await _dead(pool)
    listed = (await api.get("/v1/dead-letters?connection=acme-sf", headers=AUTH)).json()
    assert listed["total"] == 2
    assert [(d["contact_id"], d["error_code"]) for d in listed["dead_letters"]] == [
        ("c1", "INVALID_EMAIL_ADDRESS"),
        ("c2", None),
    ]
    by_error = (await api.get("/v1/dead-letters?error=unavailable", headers=AUTH)).json()
    assert [d["contact_id"] for d in by_error["dead_letters"]] == ["c2"]
    # Nothing named: refused, naming the field, and nothing happens.
    for verb in ("replay", "purge"):
        refused = await api.post(f"/v1/dead-letters/{verb}", json={}, headers=AUTH)
        assert refused.status_code == 422 and refused.json()["detail"].startswith("all:")
    unknown = await api.post(
        "/v1/dead-letters/replay", json={"connection": "nope", "all": True}, headers=AUTH
    )
    assert unknown.status_code == 404
    c1 = listed["dead_letters"][0]["id"]
    replayed = await api.post(
        "/v1/dead-letters/replay", json={"connection": "acme-sf", "ids": [c1]}, headers=AUTH
    )
    assert replayed.json() == {"replayed": 1}
    # Queued again as a CREATE (nothing in the CRM yet), ledger ready for a fresh attempt.
    score = await redis_client.zscore(keys.connection("acme-sf").ready, "c1")
    assert score is not None and int(score) // 10**13 == Band.CREATE
    row = await pool.fetchrow(
        "SELECT status, attempts FROM sync_state WHERE connection_id='acme-sf' AND contact_id='c1'"
    )
    assert row is not None and (row["status"], row["attempts"]) == ("retrying", 0)
    purged = await api.post("/v1/dead-letters/purge", json={"all": True}, headers=AUTH)
    assert purged.json() == {"purged": 1}
    assert await pool.fetchval("SELECT count(*) FROM dead_letters") == 0


async def test_contact_lookup_by_email_or_id(
    api: httpx.AsyncClient, pool: asyncpg.Pool[Any], redis_client: aioredis.Redis
) -> None:
    await _dead(pool)
    await QueueStore(redis_client).enqueue([("acme-hs", "c1", int(Band.UPDATE))])
    for q in ("ann@example.com", "  ANN@EXAMPLE.COM ", "c1"):
        found = (await api.get("/v1/contacts:lookup", params={"q": q}, headers=AUTH)).json()
        assert [c["contact"]["id"] for c in found["contacts"]] == ["c1"], q
    item = found["contacts"][0]
    assert item["contact"]["email"] == "Ann@Example.com"
    ledger = {s["connection_id"]: s for s in item["sync"]}
    # Every connection of the contact's tenant, and nothing of another tenant.
    assert set(ledger) == {"acme-sf", "acme-hs"}
    assert (ledger["acme-sf"]["status"], ledger["acme-sf"]["last_error"]) == (
        "dead",
        "INVALID_EMAIL_ADDRESS: bad",
    )
    assert (ledger["acme-hs"]["external_id"], ledger["acme-hs"]["synced_version"]) == ("H1", 1)
    assert (ledger["acme-hs"]["queue"], ledger["acme-sf"]["queue"]) == ("ready", None)
    assert [d["error_code"] for d in item["dead_letters"]] == ["INVALID_EMAIL_ADDRESS"]
    none = (await api.get("/v1/contacts:lookup", params={"q": "zed@x.io"}, headers=AUTH)).json()
    assert none["contacts"] == []
    empty = await api.get("/v1/contacts:lookup", params={"q": ""}, headers=AUTH)
    assert empty.status_code == 422 and empty.json()["detail"][0]["loc"] == ["query", "q"]


async def test_healthz_names_the_server_that_is_down(
    pool: asyncpg.Pool[Any], settings: Settings, database_url: str
) -> None:
    async for c in _app_client(pool, settings):
        ok = await c.get("/healthz")
        assert ok.status_code == 200 and ok.json()["redis"] == "ok"
    dead_redis = settings.model_copy(update={"redis_url": f"redis://127.0.0.1:{free_port()}/0"})
    async for c in _app_client(pool, dead_redis):
        resp = await c.get("/healthz")
        body = resp.json()
        assert resp.status_code == 503
        assert (body["error"], body["postgresql"]) == ("Redis down", "ok")
        assert body["redis"].startswith("down: ")
    closed = await db.create_pool(database_url, min_size=1, max_size=1)
    await closed.close()
    async for c in _app_client(closed, settings):
        resp = await c.get("/healthz")
        assert resp.status_code == 503
        assert (resp.json()["error"], resp.json()["redis"]) == ("PostgreSQL down", "ok")


async def test_series_samples_the_last_minutes(
    pool: asyncpg.Pool[Any], settings: Settings, redis_client: aioredis.Redis
) -> None:
    sampler = timeseries.Sampler()
    conns = list(await pool.fetch(db.q("ops_connections")))
    stats = keys.connection("acme-sf").stats
    await redis_client.hset(stats, mapping={"requests": 10, "created": 8, "crm_rate_limited": 1})
    t0 = 1_700_000_000_000
    await sampler.sample(redis_client, conns, t0)
    await redis_client.hincrby(stats, "requests", 50)
    await redis_client.hincrby(stats, "created", 40)
    await QueueStore(redis_client).enqueue([("acme-sf", "a", 0), ("acme-sf", "b", 1)])
    await sampler.sample(redis_client, conns, t0 + 2000)  # two seconds later
    [p] = sampler.rings["acme-sf"].points
    assert (p.sent, p.records, p.queued, p.limit, p.rate_limited) == (25.0, 20.0, 2, 100.0, 0.0)
    assert sampler.rings["acme-hs"].points[0].limit == round(100 / 10, 3)  # the tightest window
    # The API's own sampler answers /v1/series for every visible connection.
    app = create_app(settings, pool=pool)
    async with (
        app.router.lifespan_context(app),
        asgi_client(app) as c,
    ):
        app.state.ops.sampler = sampler
        body = (await c.get("/v1/series", headers=AUTH)).json()
        assert body["fields"][:3] == ["t", "sent", "records"]
        assert body["series"]["acme-sf"][0][1] == 25.0
        later = (await c.get(f"/v1/series?since={p.t}", headers=AUTH)).json()
        assert later["series"]["acme-sf"] == []
        one = (await c.get("/v1/series?connection=acme-hs", headers=AUTH)).json()
        assert list(one["series"]) == ["acme-hs"]


def _samples(text: str) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out.setdefault(s.name, []).append(s)
    return out


async def test_metrics_export_the_figures(
    api: httpx.AsyncClient, pool: asyncpg.Pool[Any], redis_client: aioredis.Redis
) -> None:
    store = QueueStore(redis_client)
    await store.configure(
        "acme-hs",
        [RateWindow(100, 10_000), RateWindow(5000, 86_400_000)],
        breaker_threshold=5,
        breaker_recovery_ms=30_000,
        paused=None,
    )
    for cid in ("acme-sf", "beta-sf"):
        await store.configure(cid, [], breaker_threshold=5, breaker_recovery_ms=30_000, paused=None)
    granted, _ = await store.take("acme-hs", 3)
    assert granted == 3
    # The worker's hand-back: 3 acknowledgements, 0.2 s, 4 s and 40 s after their commit.
    counts: dict[str, int] = {}
    for lag_ms in (200, 4000, 40_000):
        counters.record_sync_lag(counts, 1_000_000, 1_000_000 + lag_ms)
    for name, n in counts.items():
        await redis_client.hset(keys.connection("acme-hs").stats, name, n)
    await store.enqueue([("acme-hs", "old", int(Band.DELETE)), ("acme-hs", "new", 0)])
    # The relay and reconcile push their counts to Redis.
    await pool.execute("INSERT INTO contacts (id, tenant, email) VALUES ('m1', 'acme', 'm@x.io')")
    assert await relay.relay_once(pool, store, 100) == 1
    await relay.COUNTS.push(redis_client, force=True)
    await reconcile(pool, store, connection_id="acme-sf")

    status = (await api.get("/v1/status", headers=AUTH)).json()
    hs = next(c for c in status["connections"] if c["id"] == "acme-hs")
    assert hs["sync_lag_ms"]["count"] == 3 and hs["sync_lag_ms"]["p50"] == 5000
    assert hs["oldest_age_s"] is not None and hs["oldest_age_s"] >= 0
    assert {(w["window_ms"], w["used"]) for w in hs["limits"]} == {(10_000, 3), (86_400_000, 3)}
    assert status["processes"]["relay"]["moved"] >= 1

    text = (await api.get("/metrics", headers=AUTH)).text
    s = _samples(text)
    lag = {
        x.labels["le"]: x.value
        for x in s["crmsync_sync_lag_seconds_bucket"]
        if x.labels["connection"] == "acme-hs"
    }
    assert (lag["0.25"], lag["5"], lag["60"], lag["+Inf"]) == (1, 2, 3, 3)
    [total] = [x for x in s["crmsync_sync_lag_seconds_sum"] if x.labels["connection"] == "acme-hs"]
    assert total.value == pytest.approx(44.2)
    daily = {
        (x.labels["connection"], x.labels["window_seconds"]): x.value
        for x in s["crmsync_rate_window_used"]
    }
    assert daily[("acme-hs", "86400")] == 3
    limits = {
        (x.labels["connection"], x.labels["window_seconds"]): x.value
        for x in s["crmsync_rate_window_limit"]
    }
    assert limits[("acme-hs", "86400")] == 5000
    assert s["crmsync_relay_moved_total"][0].value >= 1
    assert s["crmsync_relay_enqueued_total"][0].value >= 2  # one row, two acme connections
    assert s["crmsync_reconcile_connections_total"][0].value == 1
    assert "crmsync_queue_oldest_age_seconds" in s
    assert "secret-token" not in text


async def test_a_tenant_caller_sees_and_acts_on_its_tenant_only(
    pool: asyncpg.Pool[Any], settings: Settings
) -> None:
    """What a key of one tenant gets: its tenant's data, nothing of another's."""
    await _dead(pool)
    await pool.execute(
        "INSERT INTO contacts (id, tenant, email) VALUES ('b1', 'beta', 'ann@example.com')"
    )
    app = create_app(settings, pool=pool)
    keys = {t: (await apikeys.create(pool, role="writer", tenant=t))[1] for t in ("acme", "beta")}

    async with (
        app.router.lifespan_context(app),
        asgi_client(app) as c,
    ):
        beta = {"Authorization": f"Bearer {keys['beta']}"}
        found = (await c.get("/v1/contacts:lookup?q=ann@example.com", headers=beta)).json()
        assert [x["contact"]["id"] for x in found["contacts"]] == ["b1"]
        assert {s["connection_id"] for s in found["contacts"][0]["sync"]} == {"beta-sf"}
        # Another tenant's connection does not exist for this caller.
        for method, path in (
            ("GET", "/v1/dead-letters?connection=acme-sf"),
            ("GET", "/v1/series?connection=acme-sf"),
        ):
            assert (await c.request(method, path, headers=beta)).status_code == 404, path
        replay = await c.post(
            "/v1/dead-letters/replay", json={"connection": "acme-sf", "all": True}, headers=beta
        )
        assert replay.status_code == 404
        # "all" means all of its tenant's: acme's letters stay.
        everything = await c.post("/v1/dead-letters/purge", json={"all": True}, headers=beta)
        assert everything.json() == {"purged": 0}
        assert await pool.fetchval("SELECT count(*) FROM dead_letters") == 2
        listed = (await c.get("/v1/dead-letters", headers=beta)).json()
        assert listed == {"dead_letters": [], "total": 0}
        # Pausing is managing a connection: admin keys only.
        paused = await c.post("/v1/connections/beta-sf/pause", headers=beta)
        assert paused.status_code == 403
        assert (
            await pool.fetchval("SELECT count(*) FROM connections WHERE paused_reason IS NOT NULL")
            == 0
        )
        own = (await c.get("/v1/dead-letters?connection=beta-sf", headers=beta)).json()
        assert own == {"dead_letters": [], "total": 0}
        acme = {"Authorization": f"Bearer {keys['acme']}"}
        mine = (await c.get("/v1/contacts:lookup?q=ann@example.com", headers=acme)).json()
        assert [x["contact"]["id"] for x in mine["contacts"]] == ["c1"]
        assert [x["error_code"] for x in mine["contacts"][0]["dead_letters"]] == [
            "INVALID_EMAIL_ADDRESS"
        ]


async def test_the_dashboard_files_need_no_key_and_only_they_are_served(
    api: httpx.AsyncClient,
) -> None:
    page = await api.get("/ui")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert "secret" not in page.text.lower()
    # Every file the page and its modules name is served, with its type.
    todo = set(re.findall(r'(?:src|href)="/ui/([a-z0-9_.-]+)"', page.text))
    names: set[str] = set()
    while todo:
        name = todo.pop()
        names.add(name)
        resp = await api.get(f"/ui/{name}")
        assert resp.status_code == 200, name
        if name.endswith(".js"):
            assert resp.headers["content-type"].startswith("text/javascript")
            todo |= set(re.findall(r'from "\./([a-z0-9_-]+\.js)"', resp.text)) - names
    assert {"app.js", "api.js", "chart.js", "overview.js", "connection.js", "contact.js"} <= names
    for bad in ("/ui/../app.py", "/ui/%2e%2e%2fapp.py", "/ui/app.py", "/ui/nope.js", "/ui/x/y.js"):
        assert (await api.get(bad)).status_code == 404, bad
