"""`crmsync contacts import`: COPY into staging, one merge, bad rows reported by line."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest
from typer.testing import CliRunner

from crmsync.capture.csv_import import Rejected, import_csv
from crmsync.cli import app
from crmsync.contacts import ID_PATTERN
from crmsync.errors import UserError

MIXED = (
    "id,email,first_name,last_name,company,status\n"  # line 1
    "a1,a1@x.io,Ann,Lee,Acme,lead\n"  # 2
    "a2,not-an-email,Bob,,,\n"  # 3: bad email
    "\n"  # 4: blank, ignored
    'a3,a3@x.io,"Multi\nLine",Smith,,customer\n'  # 5-6: quoted newline
    "a 4,a4@x.io,,,,active\n"  # 7: bad id
    "a5,a5@x.io,,,,vip\n"  # 8: bad status
    "a6,a6@x.io,too,many,fields,active,extra\n"  # 9: wrong field count
    f"a7,a7@x.io,{'n' * 101},,,\n"  # 10: name too long
    "a1,a1-new@x.io,Ann,Lee,Acme,customer\n"  # 11: a1 again: last line wins
    "a8,,,,,\n"  # 12: missing email
)


async def _contacts(pg: asyncpg.Connection[Any]) -> dict[str, tuple[Any, ...]]:
    rows = await pg.fetch(
        "SELECT id, tenant, email, first_name, company, status, version FROM contacts"
    )
    return {r["id"]: tuple(r)[1:] for r in rows}


async def test_bad_rows_are_reported_by_line_and_good_rows_kept(
    pg: asyncpg.Connection[Any], tmp_path: Path
) -> None:
    f = tmp_path / "mixed.csv"
    f.write_text(MIXED)
    result = await import_csv(pg, f)
    assert [str(r) for r in result.rejected] == [
        "line 3: email: not a valid email address",
        f"line 7: id: String should match pattern '{ID_PATTERN}'",
        "line 8: status: Input should be 'active', 'inactive', 'lead', 'customer' or 'churned'",
        "line 9: row: has 7 fields, the header has 6",
        "line 10: first_name: String should have at most 100 characters",
        "line 12: email: not a valid email address",
    ]
    assert (result.rows, result.accepted, result.rejected_rows) == (9, 3, 6)
    assert (result.inserted, result.updated, result.unchanged, result.superseded) == (2, 0, 0, 1)
    assert await _contacts(pg) == {
        "a1": ("default", "a1-new@x.io", "Ann", "Acme", "customer", 1),
        "a3": ("default", "a3@x.io", "Multi\nLine", None, "customer", 1),
    }
    assert await pg.fetchval("SELECT count(*) FROM outbox") == 2


async def test_reimport_is_a_noop_and_changes_bump_versions(
    pg: asyncpg.Connection[Any], tmp_path: Path
) -> None:
    f = tmp_path / "c.csv"
    f.write_text("email,id,tenant\nb1@x.io,b1,\nb2@x.io,b2,acme\n")
    first = await import_csv(pg, f, tenant="acme")
    assert (first.inserted, first.rejected) == (2, [])
    assert await _contacts(pg) == {
        "b1": ("acme", "b1@x.io", None, None, "active", 1),
        "b2": ("acme", "b2@x.io", None, None, "active", 1),
    }
    again = await import_csv(pg, f, tenant="acme")
    assert (again.inserted, again.updated, again.unchanged) == (0, 0, 2)
    assert await pg.fetchval("SELECT count(*) FROM outbox") == 2

    await pg.execute("UPDATE contacts SET deleted_at = now() WHERE id = 'b1'")
    f.write_text("email,id,tenant\nb1@x.io,b1,\nb2-new@x.io,b2,acme\n")
    third = await import_csv(pg, f, tenant="acme")
    assert (third.inserted, third.updated, third.unchanged) == (0, 2, 0)
    rows = await pg.fetch("SELECT contact_id, op, version FROM outbox ORDER BY id")
    assert [tuple(r) for r in rows][2:] == [
        ("b1", "delete", 2),
        ("b1", "update", 3),
        ("b2", "update", 2),
    ]
    assert await pg.fetchval("SELECT deleted_at FROM contacts WHERE id = 'b1'") is None


async def test_an_import_writes_one_tenant_and_refuses_rows_naming_another(
    pg: asyncpg.Connection[Any], tmp_path: Path
) -> None:
    await pg.execute(
        "INSERT INTO contacts (id, tenant, email) VALUES ('c1', 'acme', 'acme@x.io'), "
        "('c2', 'beta', 'beta@x.io')"
    )
    acme_before = await pg.fetch("SELECT * FROM contacts WHERE tenant = 'acme'")
    f = tmp_path / "beta.csv"
    f.write_text(
        "id,email,tenant\n"  # 1
        "c1,beta-c1@x.io,\n"  # 2: beta's own c1, not acme's
        "c2,beta-new@x.io,beta\n"  # 3
        "c3,c3@x.io,acme\n"  # 4: names another tenant
        "c4,c4@x.io,default\n"  # 5: so does this
    )
    result = await import_csv(pg, f, tenant="beta")
    assert [(r.line, r.field) for r in result.rejected] == [(4, "tenant"), (5, "tenant")]
    assert "names tenant 'acme', but this import writes tenant 'beta'" in result.rejected[0].reason
    assert (result.accepted, result.inserted, result.updated) == (2, 1, 1)
    assert await pg.fetch("SELECT * FROM contacts WHERE tenant = 'acme'") == acme_before
    rows = await pg.fetch("SELECT tenant, id, email FROM contacts ORDER BY tenant, id")
    assert [tuple(r) for r in rows] == [
        ("acme", "c1", "acme@x.io"),
        ("beta", "c1", "beta-c1@x.io"),
        ("beta", "c2", "beta-new@x.io"),
    ]
    # A file without a tenant column, imported without --tenant, writes `default`'s
    # contacts: acme's are neither moved nor changed.
    plain = tmp_path / "plain.csv"
    plain.write_text("id,email\nc1,default-c1@x.io\n")
    again = await import_csv(pg, plain)
    assert (again.inserted, again.rejected) == (1, [])
    assert await pg.fetch("SELECT * FROM contacts WHERE tenant = 'acme'") == acme_before
    outbox = await pg.fetch("SELECT tenant, contact_id, op FROM outbox WHERE tenant = 'acme'")
    assert [tuple(r) for r in outbox] == [("acme", "c1", "insert")]


def test_cli_import_names_the_refused_rows(tmp_path: Path, database_url: str) -> None:
    f = tmp_path / "t.csv"
    f.write_text("id,email,tenant\nk1,k1@x.io,acme\nk2,k2@x.io,beta\n")
    res = CliRunner().invoke(
        app,
        [
            "contacts",
            "import",
            str(f),
            "--tenant",
            "acme",
            "--json",
            "--database-url",
            database_url,
        ],
    )
    assert res.exit_code == 0, res.output
    out = orjson.loads(res.output)
    assert (out["accepted"], out["rejected_rows"]) == (1, 1)
    assert out["rejected"][0]["line"] == 3 and out["rejected"][0]["field"] == "tenant"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "is empty"),
        ("id,email,phone\n", "unknown column 'phone'"),
        ("id,first_name\n", "no 'email' column"),
        ("id,email,email\n", "appears twice"),
    ],
)
async def test_bad_files_are_user_errors(
    pg: asyncpg.Connection[Any], tmp_path: Path, text: str, message: str
) -> None:
    f = tmp_path / "bad.csv"
    f.write_text(text)
    with pytest.raises(UserError, match=message):
        await import_csv(pg, f)
    assert await pg.fetchval("SELECT count(*) FROM contacts") == 0


async def test_missing_file_and_bad_tenant(pg: asyncpg.Connection[Any], tmp_path: Path) -> None:
    with pytest.raises(UserError, match="cannot read"):
        await import_csv(pg, tmp_path / "nope.csv")
    f = tmp_path / "ok.csv"
    f.write_text("id,email\na,a@x.io\n")
    with pytest.raises(UserError, match="--tenant"):
        await import_csv(pg, f, tenant="no spaces")


async def test_a_large_file_loads_in_one_merge(pg: asyncpg.Connection[Any], tmp_path: Path) -> None:
    f = tmp_path / "big.csv"
    lines = ["id,email,company"] + [f"c{i},c{i}@x.io,Co{i % 7}" for i in range(20_000)]
    lines[5001] = "c5000,broken,Co"  # line 5002 of the file
    f.write_text("\n".join(lines) + "\n")
    result = await import_csv(pg, f)
    assert result.rejected == [Rejected(5002, "email", "not a valid email address")]
    assert await pg.fetchval("SELECT count(*) FROM contacts") == 19_999
    assert await pg.fetchval("SELECT count(DISTINCT xmin::text) FROM contacts") == 1
    assert await pg.fetchval("SELECT count(*) FROM outbox") == 19_999


def test_cli_reports_rejections_and_exit_codes(database_url: str, tmp_path: Path) -> None:
    f = tmp_path / "mixed.csv"
    f.write_text(MIXED)
    runner = CliRunner()
    res = runner.invoke(
        app, ["contacts", "import", str(f), "--database-url", database_url], env={"COLUMNS": "200"}
    )
    assert res.exit_code == 0, res.output
    assert "3 accepted" in res.output and "6 rejected" in res.output
    assert "not a valid email address" in res.output

    as_json = runner.invoke(
        app, ["contacts", "import", str(f), "--json", "--database-url", database_url]
    )
    assert as_json.exit_code == 0
    summary = orjson.loads(as_json.stdout)
    assert (summary["accepted"], summary["unchanged"], summary["rejected_rows"]) == (3, 2, 6)
    assert summary["rejected"][0] == {
        "line": 3,
        "field": "email",
        "reason": "not a valid email address",
    }

    bad = tmp_path / "all-bad.csv"
    bad.write_text("id,email\nx,nope\n")
    res = runner.invoke(app, ["contacts", "import", str(bad), "--database-url", database_url])
    assert res.exit_code == 1

    async def count() -> int:
        conn = await asyncpg.connect(database_url)
        try:
            return int(await conn.fetchval("SELECT count(*) FROM contacts"))
        finally:
            await conn.close()

    assert asyncio.run(count()) == 2


async def test_attribute_columns_set_attributes(
    pg: asyncpg.Connection[Any], tmp_path: Path
) -> None:
    f = tmp_path / "a.csv"
    f.write_text(
        "id,email,last_name,attr.region,attr.plan\n"
        "a1,a1@x.io,Lee,EU,gold\n"
        "a2,a2@x.io,Kim,,silver\n"
        "a3,a3@x.io,Ray,,\n"
    )
    result = await import_csv(pg, f)
    assert (result.inserted, result.rejected) == (3, [])
    rows = await pg.fetch("SELECT id, attributes, version FROM contacts ORDER BY id")
    assert [(r["id"], r["attributes"]) for r in rows] == [
        ("a1", {"region": "EU", "plan": "gold"}),
        ("a2", {"plan": "silver"}),
        ("a3", {}),
    ]
    f.write_text("id,email,last_name,attr.region\na1,a1@x.io,Lee,EU\na3,a3@x.io,Ray,\n")
    again = await import_csv(pg, f)
    assert (again.updated, again.unchanged) == (1, 1)  # a1 lost its plan: a change
    assert await pg.fetchval("SELECT version FROM contacts WHERE id = 'a1'") == 2
    bad = tmp_path / "bad.csv"
    bad.write_text("id,email,attr.1st\na1,a1@x.io,EU\n")
    with pytest.raises(UserError, match=r"column 'attr\.1st' does not name a valid attribute"):
        await import_csv(pg, bad)
