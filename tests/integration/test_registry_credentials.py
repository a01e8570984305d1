"""The worker's registry and credentials on a real PostgreSQL and Redis: one token
source per connection, kept while its credentials stay (a rotated refresh token
only updates it), rebuilt when an operator replaces them; settings stored before a
rule refused them still load, with a warning per problem."""

from __future__ import annotations

from typing import Any

import aiohttp
import asyncpg
import pytest
from structlog.testing import capture_logs

from crmsync import connections, vault
from crmsync.crm.credentials import StaticToken
from crmsync.crm.tokens import SharedToken
from crmsync.queue.store import QueueStore
from crmsync.redis_client import RedisClient
from crmsync.settings import Settings
from crmsync.worker.registry import Registry
from support import add_connections


@pytest.fixture
def registry(
    pool: asyncpg.Pool[Any],
    redis_client: RedisClient,
    settings: Settings,
    http: aiohttp.ClientSession,
) -> Registry:
    """A worker's registry on this test's database and Redis (nothing loaded yet)."""
    return Registry(pool, QueueStore(redis_client), http, settings)


def oauth(cid: str = "o1", refresh_token: str = "refresh-0001") -> connections.Connection:
    return connections.parse_connection(
        id=cid,
        crm="hubspot",
        account="p",
        base_url="http://127.0.0.1:1",
        auth="oauth-refresh",
        client_id="c",
        client_secret="secret-0001",
        refresh_token=refresh_token,
    )


async def test_token_sources_follow_the_credentials(
    pg: asyncpg.Connection[Any], pool: asyncpg.Pool[Any], settings: Settings, registry: Registry
) -> None:
    keys = vault.keyring(settings.secret_key)
    bearer = connections.parse_connection(
        id="b1", crm="salesforce", account="a", base_url="http://127.0.0.1:1", token="tok-12345678"
    )
    await add_connections(pg, [oauth(), bearer], keys)
    reg = registry
    assert await reg.refresh() == {"o1", "b1"}
    source, adapter = reg.tokens["o1"], reg.adapters["o1"]
    assert isinstance(source, SharedToken) and isinstance(reg.tokens["b1"], StaticToken)

    # A worker stored the refresh token the CRM rotated: same source, new secret.
    rev = reg.connections["o1"].auth.rev
    assert await connections.store_rotated(pool, "o1", keys, rev, "refresh-0002")
    assert await reg.refresh() == {"o1"}
    assert reg.tokens["o1"] is source and reg.adapters["o1"] is adapter
    assert source.secrets["refresh_token"] == "refresh-0002"

    # An operator's new credentials: a new source (and adapter) on a new rev.
    async with pool.acquire() as conn, conn.transaction():
        cur = await connections.load(conn, "o1", keys, lock=True)
        new = connections.apply(cur, connections.Changes(refresh_token="refresh-9999"))
        await connections.store(conn, new, keys)
    assert await reg.refresh() == {"o1"}
    replaced = reg.tokens["o1"]
    assert replaced is not source and isinstance(replaced, SharedToken)
    assert replaced.rev == new.auth.rev != rev
    assert reg.adapters["o1"] is not adapter


async def test_settings_refused_now_still_load_with_a_warning(
    pg: asyncpg.Connection[Any], settings: Settings, registry: Registry
) -> None:
    keys = vault.keyring(settings.secret_key)
    await add_connections(pg, [oauth()], keys)
    # Stored by an older crmsync, which took any key and value.
    old = {"batch": True, "batch_size": 500}
    await pg.execute("UPDATE connections SET settings = $1::jsonb", old)
    reg = registry
    with capture_logs() as logs:
        assert await reg.refresh() == {"o1"}
    assert reg.connections["o1"].settings == old
    assert reg.adapters["o1"] is not None
    problems = [e["problem"] for e in logs if e["event"] == "connections.setting_problem"]
    assert problems == [
        "--settings 'batch' is not a setting crmsync knows; did you mean 'batch_size'? "
        "(known: api_version, batch_size, external_id_field, field_map, id_property, "
        "max_in_flight, timeout_seconds, token_max_age_seconds).",
        "--settings batch_size (records per CRM request) must be a whole number from 1 to 100.",
    ]
