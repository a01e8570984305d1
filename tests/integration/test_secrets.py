"""CRM credentials at rest: sealed under CRMSYNC_SECRET_KEY, rotated without losing a
connection, one clear error for a missing or wrong key (never a plaintext fallback),
and plaintext tokens from before encryption sealed by `crmsync migrate`."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis
from typer.testing import CliRunner, Result

from crmsync import connections, db, vault
from crmsync.capture.relay import relay_once
from crmsync.cli import app as cli
from crmsync.processes import run_worker
from crmsync.queue.store import QueueStore
from crmsync.settings import Settings
from crmsync_lab.mock.config import AccountSpec, MockConfig
from crmsync_lab.mock.limits import Window
from crmsync_lab.mock.server import MockHandle, start_mock


@contextlib.asynccontextmanager
async def running_worker(settings: Settings) -> AsyncIterator[asyncio.Task[None]]:
    stop = asyncio.Event()
    task = asyncio.create_task(run_worker(settings, 20, stop))
    try:
        yield task
    finally:
        stop.set()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, 15)


@pytest.fixture
async def mock() -> AsyncIterator[MockHandle]:
    m = await start_mock(
        MockConfig(
            accounts=[
                AccountSpec("salesforce", "acme", limits=(Window(200, 1000),)),
                AccountSpec("hubspot", "acme", limits=(Window(200, 1000),)),
            ],
            latency_ms=1,
            jitter_ms=0,
        )
    )
    try:
        yield m
    finally:
        await m.close()


async def _add_both(pool: asyncpg.Pool[Any], mock: MockHandle, keys: vault.Keyring) -> None:
    for cid, crm in (("sf", "salesforce"), ("hs", "hubspot")):
        spec = connections.parse_connection(
            id=cid, crm=crm, account="acme", base_url=mock.base_url(crm, "acme"),
            token=mock.token(crm, "acme"),
        )  # fmt: skip
        await connections.add(pool, spec, keys)


async def _sync(pool: asyncpg.Pool[Any], redis_url: str, mock: MockHandle, ids: list[str]) -> None:
    """Insert contacts (active, with a company: both CRMs take them) and wait until
    both accounts hold them."""
    await pool.executemany(
        "INSERT INTO contacts (id, email, last_name, company)"
        " VALUES ($1, $1 || '@x.io', 'L', 'Co')",
        [(i,) for i in ids],
    )
    redis = aioredis.from_url(redis_url)
    try:
        store = QueueStore(redis)
        for _ in range(200):
            while await relay_once(pool, store, 1000):
                pass
            held = [
                {r.get("CrmSync_Id__c") or r["properties"]["crmsync_id"] for r in records}
                for records in (mock.records(c, "acme") for c in ("salesforce", "hubspot"))
            ]
            if all(set(ids) <= h for h in held):
                return
            await asyncio.sleep(0.1)
    finally:
        await redis.aclose()
    raise AssertionError(f"not synced: {ids}")


async def invoke(args: list[str], env: dict[str, str]) -> Result:
    """The CLI, from an async test: its own event loop runs in a thread."""
    return await asyncio.to_thread(CliRunner().invoke, cli, args, env=env)


def _requests(mock: MockHandle) -> int:
    return sum(int(a.get("requests", 0)) for a in mock.stats()["accounts"].values())


async def test_rotation_keeps_every_connection_working(
    settings: Settings, pool: asyncpg.Pool[Any], mock: MockHandle, database_url: str
) -> None:
    old_key, new_key = vault.new_key(), vault.new_key()
    old, new = vault.keyring(old_key), vault.keyring(new_key)
    await _add_both(pool, mock, old)
    with_old = settings.model_copy(update={"secret_key": old_key})
    async with running_worker(with_old):
        await _sync(pool, settings.redis_url, mock, ["a1", "a2"])
        res = await invoke(
            ["secrets", "rotate", "--new-key", new_key, "--database-url", database_url],
            {"CRMSYNC_SECRET_KEY": old_key},
        )
        assert res.exit_code == 0, res.output
        assert f"re-encrypted the credentials of 2 connection(s) under key id {new.current_id}" in (
            res.output
        )
        rows = await pool.fetch("SELECT id, secrets FROM connections ORDER BY id")
        for r in rows:
            assert r["secrets"].split(".")[1] == new.current_id
            assert new.open(r["id"], r["secrets"])["token"] == mock.token(
                {"sf": "salesforce", "hs": "hubspot"}[r["id"]], "acme"
            )
            with pytest.raises(vault.SecretsError):
                old.open(r["id"], r["secrets"])
        # The worker started before the rotation keeps the credentials it holds.
        await _sync(pool, settings.redis_url, mock, ["b1"])
    # One started with only the old key stops at once with one clear error.
    with pytest.raises(vault.SecretsError) as refused:
        async with running_worker(with_old) as task:
            await task
    assert f"encrypted with key id {new.current_id}" in str(refused.value)
    assert old_key not in str(refused.value) and new_key not in str(refused.value)
    # With the new key (alone, or listed before the old one) every connection syncs.
    for setting in (new_key, f"{new_key},{old_key}"):
        async with running_worker(settings.model_copy(update={"secret_key": setting})):
            await _sync(pool, settings.redis_url, mock, [f"c-{len(setting)}"])


async def test_rotate_is_all_or_nothing_and_generate_prints_the_key(
    pool: asyncpg.Pool[Any], mock: MockHandle, database_url: str
) -> None:
    key = vault.new_key()
    await _add_both(pool, mock, vault.keyring(key))
    # A row sealed under a key nobody holds: the rotation stops and changes nothing.
    stranger = vault.keyring(vault.new_key()).seal("hs", {"token": "t"})
    await pool.execute("UPDATE connections SET secrets = $1 WHERE id = 'hs'", stranger)
    before = await pool.fetch("SELECT id, secrets FROM connections ORDER BY id")
    res = await invoke(
        ["secrets", "rotate", "--generate", "--database-url", database_url],
        {"CRMSYNC_SECRET_KEY": key},
    )
    assert isinstance(res.exception, vault.SecretsError)
    assert "connection 'hs'" in str(res.exception)
    assert await pool.fetch("SELECT id, secrets FROM connections ORDER BY id") == before

    await pool.execute("DELETE FROM connections WHERE id = 'hs'")
    res = await invoke(
        ["secrets", "rotate", "--generate", "--database-url", database_url],
        {"CRMSYNC_SECRET_KEY": key},
    )
    assert res.exit_code == 0, res.output
    printed = res.output.strip().splitlines()[-1]
    sealed = await pool.fetchval("SELECT secrets FROM connections WHERE id = 'sf'")
    assert vault.keyring(printed).open("sf", sealed)["token"] == mock.token("salesforce", "acme")


@pytest.mark.parametrize(
    ("setting", "says"),
    [
        ("", "CRMSYNC_SECRET_KEY is not set"),
        (" , ", "CRMSYNC_SECRET_KEY is not set"),
        ("not-base64!", "CRMSYNC_SECRET_KEY must be base64 of 32 random bytes"),
        ("c2hvcnQ=", "CRMSYNC_SECRET_KEY must be base64 of 32 random bytes"),
    ],
)
def test_a_missing_or_malformed_key_is_one_clear_error(
    database_url: str, setting: str, says: str
) -> None:
    res = CliRunner().invoke(
        cli,
        [
            "connections", "add", "x", "--crm", "salesforce", "--account", "a",
            "--base-url", "http://127.0.0.1:1", "--token", "secret-token-value-0123",
            "--database-url", database_url,
        ],
        env={"CRMSYNC_SECRET_KEY": setting},
    )  # fmt: skip
    assert isinstance(res.exception, vault.SecretsError)
    message = str(res.exception)
    assert says in message and "\n" not in message
    assert "secret-token-value-0123" not in message
    if setting.strip(" ,"):
        assert setting not in message

    async def count() -> int:
        conn = await asyncpg.connect(database_url)
        try:
            n: int = await conn.fetchval("SELECT count(*) FROM connections")
            return n
        finally:
            await conn.close()

    assert asyncio.run(count()) == 0


async def test_a_wrong_or_tampered_value_never_falls_back_to_plaintext(
    settings: Settings, pool: asyncpg.Pool[Any], mock: MockHandle
) -> None:
    keys = vault.keyring(settings.secret_key)
    await _add_both(pool, mock, keys)
    # hs's sealed credentials copied onto sf's row: they belong to another connection.
    await pool.execute(
        "UPDATE connections SET secrets = (SELECT secrets FROM connections WHERE id = 'hs') "
        "WHERE id = 'sf'"
    )
    with pytest.raises(vault.SecretsError) as refused:
        async with running_worker(settings) as task:
            await task
    assert "belongs to another connection" in str(refused.value)
    for wrong in ("", vault.new_key()):
        with pytest.raises(vault.SecretsError):
            async with running_worker(settings.model_copy(update={"secret_key": wrong})) as task:
                await task
    assert _requests(mock) == 0  # nothing was sent with anything


async def _migrate_to(conn: asyncpg.Connection[Any], version: int) -> None:
    """An empty schema brought to ``version`` only, as an older crmsync left it."""
    await conn.execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public")
    await conn.execute(
        "CREATE TABLE schema_migrations (version integer PRIMARY KEY, name text NOT NULL,"
        " applied_at timestamptz NOT NULL DEFAULT now())"
    )
    for v, name, sql in db._migrations():
        if v <= version:
            await conn.execute(sql)
            await conn.execute("INSERT INTO schema_migrations VALUES ($1, $2)", v, name)


async def test_migrations_keep_existing_data(pg: asyncpg.Connection[Any]) -> None:
    await _migrate_to(pg, 6)
    await pg.execute(
        "INSERT INTO contacts (id, tenant, email) VALUES ('a', 'acme', 'a@x.io'), "
        "('b', 'default', 'b@x.io')"
    )
    await pg.execute(
        "INSERT INTO connections (id, tenant, crm, account, base_url, token) VALUES "
        "('sf', 'acme', 'salesforce', 'acme', 'http://sf', 'plain-token-0123456789')"
    )
    await pg.execute(
        "INSERT INTO sync_state (connection_id, contact_id, external_id, synced_version, status)"
        " VALUES ('sf', 'a', '003A', 1, 'synced')"
    )
    contacts = await pg.fetch("SELECT * FROM contacts ORDER BY id")
    await db.migrate(pg)
    assert await pg.fetch("SELECT * FROM contacts ORDER BY id") == contacts
    pkey = await pg.fetchval(
        "SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conname = 'contacts_pkey'"
    )
    assert pkey == "PRIMARY KEY (tenant, id)"
    assert await pg.fetchval("SELECT count(*) FROM sync_state") == 1
    conn = await pg.fetchrow("SELECT * FROM connections")
    assert conn is not None and (conn["id"], conn["tenant"], conn["secrets"]) == (
        "sf",
        "acme",
        None,
    )
    assert "token" not in dict(conn)
    assert await pg.fetchval("SELECT token FROM connections_unsealed_tokens") == (
        "plain-token-0123456789"
    )


async def test_migrate_seals_tokens_stored_in_clear(
    pg: asyncpg.Connection[Any], database_url: str, settings: Settings
) -> None:
    await _migrate_to(pg, 8)
    token = "plain-token-0123456789"
    await pg.execute(
        "INSERT INTO connections (id, crm, account, base_url, token) VALUES "
        "('sf', 'salesforce', 'acme', 'http://127.0.0.1:1', $1)",
        token,
    )
    unkeyed = await invoke(["migrate", "--database-url", database_url], {"CRMSYNC_SECRET_KEY": ""})
    assert unkeyed.exit_code == 0, unkeyed.output
    assert "1 connection(s) still hold their token in clear" in unkeyed.output
    listed = await connections.list_all(pg)
    assert listed[0]["token"] == connections.UNSEALED_HINT
    # No plaintext fallback: a worker refuses the connection until it is sealed.
    with pytest.raises(vault.SecretsError) as refused:
        async with running_worker(settings) as task:
            await task
    assert "run `crmsync migrate` with CRMSYNC_SECRET_KEY set" in str(refused.value)

    keyed = await invoke(
        ["migrate", "--database-url", database_url], {"CRMSYNC_SECRET_KEY": settings.secret_key}
    )
    assert keyed.exit_code == 0, keyed.output
    assert "encrypted the tokens of 1 connection(s) stored in clear" in keyed.output
    assert await pg.fetchval("SELECT count(*) FROM connections_unsealed_tokens") == 0
    row = await pg.fetchrow("SELECT * FROM connections")
    assert row is not None and token not in str(dict(row))
    assert vault.keyring(settings.secret_key).open("sf", row["secrets"]) == {"token": token}
    assert (await connections.list_all(pg))[0]["token"] == "…6789"
