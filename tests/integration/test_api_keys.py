"""API keys: created once and shown once, stored as hashes, revoked within the cache
time; the OpenAPI document declares the bearer scheme and typed answers; /metrics
aggregates at most once per cache time however often it is scraped."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import pytest
from typer.testing import CliRunner

from crmsync import apikeys, report
from crmsync.api import views
from crmsync.api.app import create_app
from crmsync.cli import app as cli
from crmsync.clock import FakeClock
from crmsync.errors import UserError
from crmsync.settings import Settings
from support import asgi_client

BOOT = "bootstrap-admin-key"


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_cli_create_shows_the_key_once_list_and_revoke(database_url: str) -> None:
    runner = CliRunner()
    made = runner.invoke(
        cli,
        ["keys", "create", "--tenant", "acme", "--role", "writer", "--database-url", database_url],
    )
    assert made.exit_code == 0, made.output
    key = made.output.strip().splitlines()[-1]
    assert key.startswith("crmsync_") and " " not in key
    kid = apikeys.key_id_of(key)
    assert kid is not None and kid in made.output.splitlines()[0]
    admin = runner.invoke(cli, ["keys", "create", "--admin", "--database-url", database_url])
    admin_key = admin.output.strip().splitlines()[-1]
    assert admin.exit_code == 0 and admin_key != key

    listed = runner.invoke(cli, ["keys", "list", "--json", "--database-url", database_url])
    assert listed.exit_code == 0
    assert key not in listed.output and admin_key not in listed.output
    assert key.rsplit("_", 1)[1] not in listed.output  # not even the secret part

    async def rows() -> list[asyncpg.Record]:
        conn = await asyncpg.connect(database_url)
        try:
            return await conn.fetch("SELECT * FROM api_keys")
        finally:
            await conn.close()

    stored = asyncio.run(rows())
    assert len(stored) == 2
    assert all(key not in str(dict(r)) and admin_key not in str(dict(r)) for r in stored)

    gone = runner.invoke(cli, ["keys", "revoke", kid, "--database-url", database_url])
    assert gone.exit_code == 0 and f"revoked key {kid}" in gone.output
    revoked = [r for r in asyncio.run(rows()) if r["id"] == kid]
    assert revoked[0]["revoked_at"] is not None


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--tenant", "acme"], "--role writer|reader, or --admin"),
        (["--role", "writer"], "--tenant is required"),
        (["--tenant", "acme", "--role", "owner"], "--role 'owner'"),
        (["--admin", "--tenant", "acme"], "leave out --tenant"),
        (["--admin", "--role", "reader"], "contradict"),
        (["--tenant", "a b", "--role", "reader"], "--tenant 'a b'"),
    ],
)
def test_cli_create_names_the_bad_flag(database_url: str, args: list[str], says: str) -> None:
    res = CliRunner().invoke(cli, ["keys", "create", *args, "--database-url", database_url])
    assert isinstance(res.exception, UserError)
    assert says in str(res.exception)


def test_cli_revoke_unknown_key(database_url: str) -> None:
    res = CliRunner().invoke(cli, ["keys", "revoke", "nope", "--database-url", database_url])
    assert isinstance(res.exception, UserError)
    assert "no API key 'nope'" in str(res.exception)


async def test_a_revoke_takes_effect_within_the_cache_time(
    database_url: str, pool: asyncpg.Pool[Any]
) -> None:
    settings = Settings(database_url=database_url, api_keys="", api_key_cache_seconds=5)
    _, key = await apikeys.create(pool, role="reader", tenant="acme")
    clock = FakeClock(100.0)
    app = create_app(settings, pool=pool)
    app.state.key_verifier.now = clock
    async with asgi_client(app) as client:
        assert (await client.get("/v1/connections", headers=_bearer(key))).status_code == 200
        assert await pool.fetchval("SELECT last_used_at FROM api_keys") is not None
        await apikeys.revoke(pool, apikeys.key_id_of(key) or "")
        clock.advance(4.9)  # still trusted from the cache
        assert (await client.get("/v1/connections", headers=_bearer(key))).status_code == 200
        clock.advance(0.2)  # past the cache time: read again, refused
        assert (await client.get("/v1/connections", headers=_bearer(key))).status_code == 401


@pytest.mark.parametrize(
    "presented",
    [
        "crmsync_",
        "crmsync_zzzzzzzzzzzz_secret",
        "crmsync_0123456789ab",
        "crmsync_0123456789ab_wrong-secret",
        "other_0123456789ab_x",
        BOOT + "x",
    ],
)
async def test_malformed_and_unknown_keys_are_401(
    database_url: str, pool: asyncpg.Pool[Any], presented: str
) -> None:
    settings = Settings(database_url=database_url, api_keys=BOOT)
    row, key = await apikeys.create(pool, role="admin", tenant=None)
    # The same id with another secret is refused too.
    presented = presented.replace("0123456789ab", row["id"])
    async with asgi_client(create_app(settings, pool=pool)) as client:
        assert (await client.get("/v1/status", headers=_bearer(key))).status_code == 200
        assert (await client.get("/v1/status", headers=_bearer(BOOT))).status_code == 200
        resp = await client.get("/v1/status", headers=_bearer(presented))
        assert resp.status_code == 401
        assert resp.headers["www-authenticate"] == "Bearer"


async def test_openapi_declares_the_bearer_scheme_roles_and_answers(
    database_url: str, pool: asyncpg.Pool[Any]
) -> None:
    settings = Settings(database_url=database_url, api_keys=BOOT)
    async with asgi_client(create_app(settings, pool=pool)) as client:
        docs = await client.get("/docs")
        assert docs.status_code == 200 and "swagger" in docs.text.lower()
        doc = (await client.get("/openapi.json")).json()
    assert doc["components"]["securitySchemes"]["bearer"] == {
        "type": "http",
        "scheme": "bearer",
        "description": "An API key: `crmsync keys create` or CRMSYNC_API_KEYS (admin).",
    }
    for path, item in doc["paths"].items():
        for method, op in item.items():
            protected = path.startswith("/v1/") or path == "/metrics"
            assert (op.get("security") == [{"bearer": []}]) == protected, (method, path)
            if path.startswith("/v1/"):
                assert op["x-crmsync-role"] in ("reader", "writer", "admin")
                assert "Needs a" in op["description"]
                ok = op["responses"].get("200") or op["responses"]["201"]
                assert "$ref" in ok["content"]["application/json"]["schema"], (method, path)
                assert "401" in op["responses"] and "403" in op["responses"]
    get = doc["paths"]["/v1/contacts/{id}"]["get"]
    ref = get["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]
    assert ref.endswith("/ContactWithSync")
    put = doc["paths"]["/v1/tenants/{tenant}/contacts/{id}"]["put"]
    assert put["x-crmsync-role"] == "writer" and "409" in put["responses"]


async def test_metrics_aggregate_at_most_once_per_cache_time(
    database_url: str, redis_url: str, pool: asyncpg.Pool[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    computed: list[str | None] = []
    real = report.collect

    async def counting(*args: Any) -> dict[str, Any]:
        computed.append(args[2] if len(args) > 2 else None)
        return await real(*args)

    monkeypatch.setattr(views, "collect", counting)
    await pool.execute(
        "INSERT INTO connections (id, tenant, crm, account, base_url) VALUES "
        "('acme-sf', 'acme', 'salesforce', 'a', 'http://x'), "
        "('beta-sf', 'beta', 'salesforce', 'b', 'http://x')"
    )
    _, acme = await apikeys.create(pool, role="reader", tenant="acme")
    settings = Settings(
        database_url=database_url, redis_url=redis_url, api_keys=BOOT, metrics_cache_seconds=5
    )
    clock = FakeClock(0.0)
    app = create_app(settings, pool=pool)
    app.state.report_cache.now = clock
    async with asgi_client(app) as client:
        # 200 scrapes, 50 at a time and then one by one, by admin and tenant keys.
        for _ in range(4):
            answers = await asyncio.gather(
                *(client.get("/metrics", headers=_bearer(k)) for k in [BOOT, acme] * 25)
            )
            assert {a.status_code for a in answers} == {200}
        for _ in range(100):
            assert (await client.get("/metrics", headers=_bearer(acme))).status_code == 200
        assert computed == [None]
        clock.advance(5.0)
        tenant_view = await client.get("/metrics", headers=_bearer(acme))
        assert computed == [None, None]
        admin_view = await client.get("/metrics", headers=_bearer(BOOT))
        assert computed == [None, None]
    assert 'connection="acme-sf"' in tenant_view.text
    assert "beta" not in tenant_view.text
    assert "crmsync_api_" not in tenant_view.text  # the process's own, all-tenant counters
    assert 'connection="beta-sf"' in admin_view.text and "crmsync_api_" in admin_view.text
