"""Change capture: every writer (API, plain SQL, CSV import) lands in the outbox."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from crmsync.capture.csv_import import import_csv
from support import OpenApi


async def _outbox(pg: asyncpg.Connection[Any]) -> list[tuple[Any, ...]]:
    rows = await pg.fetch("SELECT tenant, contact_id, op, version FROM outbox ORDER BY id")
    return [tuple(r) for r in rows]


async def test_api_sql_and_csv_writes_are_all_captured(
    api_client: OpenApi, pg: asyncpg.Connection[Any], tmp_path: Path
) -> None:
    api = await api_client()
    resp = await api.put(
        "/v1/contacts/via-api",
        json={"email": "api@x.io"},
        headers={"Authorization": "Bearer test-key"},
    )
    assert resp.status_code == 200
    await pg.execute("INSERT INTO contacts (id, email) VALUES ('via-sql', 'sql@x.io')")
    csv_file = tmp_path / "c.csv"
    csv_file.write_text("id,email,tenant\nvia-csv,csv@x.io,acme\n")
    await import_csv(pg, csv_file, tenant="acme")
    assert await _outbox(pg) == [
        ("default", "via-api", "insert", 1),
        ("default", "via-sql", "insert", 1),
        ("acme", "via-csv", "insert", 1),
    ]


@pytest.mark.skipif(shutil.which("psql") is None, reason="needs the psql client")
async def test_insert_from_psql_writes_an_outbox_row(
    database_url: str, pg: asyncpg.Connection[Any]
) -> None:
    proc = await asyncio.create_subprocess_exec(
        "psql",
        database_url,
        "-v",
        "ON_ERROR_STOP=1",
        "-c",
        "INSERT INTO contacts (id, email, company) VALUES ('p1', 'p@x.io', 'Acme')",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, errs = await proc.communicate()
    assert proc.returncode == 0, errs.decode()
    assert await _outbox(pg) == [("default", "p1", "insert", 1)]


async def test_noop_update_writes_no_outbox_row(pg: asyncpg.Connection[Any]) -> None:
    await pg.execute(
        "INSERT INTO contacts (id, email, first_name) "
        "VALUES ('a', 'a@x.io', 'A'), ('b', 'b@x.io', NULL)"
    )
    await pg.execute("UPDATE contacts SET email = email, first_name = first_name")
    await pg.execute("UPDATE contacts SET first_name = NULL WHERE id = 'b'")
    assert await pg.fetchval("SELECT count(*) FROM outbox") == 2
    assert await pg.fetchval("SELECT max(version) FROM contacts") == 1
    # One statement touching both rows: only the row that really changed is captured.
    await pg.execute(
        "UPDATE contacts SET first_name = 'A', last_name = CASE id WHEN 'b' THEN 'B' END"
    )
    assert (await _outbox(pg))[2:] == [("default", "b", "update", 2)]


async def test_soft_and_hard_deletes_are_captured(pg: asyncpg.Connection[Any]) -> None:
    await pg.execute(
        "INSERT INTO contacts (id, email) VALUES ('soft', 's@x.io'), ('hard', 'h@x.io')"
    )
    await pg.execute("UPDATE contacts SET deleted_at = now() WHERE id = 'soft'")
    await pg.execute("DELETE FROM contacts WHERE id = 'hard'")
    assert (await _outbox(pg))[2:] == [
        ("default", "soft", "delete", 2),
        ("default", "hard", "delete", 2),
    ]


# Every way plain SQL could change a contact's identity: each is refused, with an
# error naming the contact and both tenants, and changes nothing.
IDENTITY_CHANGES = [
    ("UPDATE contacts SET tenant = 'two' WHERE id = 'm'", "cannot move to tenant two"),
    ("UPDATE contacts SET tenant = 'two', email = 'n@x.io'", "cannot move to tenant two"),
    ("UPDATE contacts SET tenant = upper(tenant)", "cannot move to tenant ONE"),
    ("UPDATE contacts SET id = 'm2' WHERE tenant = 'one'", "cannot change its id to m2"),
    (
        "INSERT INTO contacts (id, tenant, email) VALUES ('m', 'one', 'x@x.io') "
        "ON CONFLICT (tenant, id) DO UPDATE SET tenant = 'two'",
        "cannot move to tenant two",
    ),
]


@pytest.mark.parametrize(("sql", "says"), IDENTITY_CHANGES)
async def test_a_contact_never_changes_tenant_or_id(
    pg: asyncpg.Connection[Any], sql: str, says: str
) -> None:
    await pg.execute("INSERT INTO contacts (id, email, tenant) VALUES ('m', 'm@x.io', 'one')")
    before = await pg.fetch("SELECT * FROM contacts")
    with pytest.raises(asyncpg.CheckViolationError) as refused:
        await pg.execute(sql)
    assert says in str(refused.value)
    assert "contact m belongs to tenant one" in str(refused.value) or "contact m of" in str(
        refused.value
    )
    assert await pg.fetch("SELECT * FROM contacts") == before
    assert await _outbox(pg) == [("one", "m", "insert", 1)]


async def test_same_id_in_two_tenants_is_two_contacts(pg: asyncpg.Connection[Any]) -> None:
    await pg.execute(
        "INSERT INTO contacts (id, email, tenant) VALUES ('c1', 'a@x.io', 'one'), "
        "('c1', 'b@x.io', 'two')"
    )
    await pg.execute("UPDATE contacts SET first_name = 'Ann' WHERE tenant = 'one' AND id = 'c1'")
    await pg.execute("UPDATE contacts SET deleted_at = now() WHERE tenant = 'two' AND id = 'c1'")
    assert await _outbox(pg) == [
        ("one", "c1", "insert", 1),
        ("two", "c1", "insert", 1),
        ("one", "c1", "update", 2),
        ("two", "c1", "delete", 2),
    ]


async def test_rolled_back_write_leaves_no_outbox_row(pg: asyncpg.Connection[Any]) -> None:
    with pytest.raises(asyncpg.UniqueViolationError):
        async with pg.transaction():
            await pg.execute("INSERT INTO contacts (id, email) VALUES ('r', 'r@x.io')")
            await pg.execute("INSERT INTO contacts (id, email) VALUES ('r', 'r@x.io')")
    assert await pg.fetchval("SELECT count(*) FROM outbox") == 0
