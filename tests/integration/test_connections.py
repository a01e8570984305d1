"""`crmsync connections add/list/remove/pause/resume` against a real PostgreSQL."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from typer.testing import CliRunner, Result

from crmsync import connections, redact, vault
from crmsync.cli import app
from crmsync.errors import UserError
from crmsync.settings import Settings
from support import fetch_now

TOKEN = "00Dxx0000001gPL!AQ4AQFaketokenvalue9z8y"


def _cli(database_url: str, *args: str) -> Result:
    return CliRunner().invoke(
        app, ["connections", *args, "--database-url", database_url], env={"COLUMNS": "250"}
    )


def _add(database_url: str, cid: str, *extra: str) -> Result:
    return _cli(
        database_url,
        "add",
        cid,
        "--crm",
        "salesforce",
        "--account",
        "acme",
        "--base-url",
        "http://127.0.0.1:9001/",
        "--token",
        TOKEN,
        "--no-check",
        *extra,
    )


def test_add_list_pause_resume_remove(database_url: str) -> None:
    res = _add(
        database_url,
        "acme-sf",
        "--tenant",
        "acme",
        "--rate-limit",
        "100/s",
        "--rate-limit",
        "100000/day",
        "--rate-limit",
        "1000/10s",
        "--settings",
        "api_version=v61.0",
        "--settings",
        "batch_size=50",
    )
    assert res.exit_code == 0, res.output
    assert TOKEN not in res.output
    hs = _cli(
        database_url, "add", "hs1", "--crm", "HubSpot", "--account", "p1",
        "--base-url", "https://api.hubapi.test", "--token", "pat-na1-abcdefghijkl", "--no-check",
    )  # fmt: skip
    assert hs.exit_code == 0, hs.output

    (row,) = fetch_now(database_url, "SELECT * FROM connections WHERE id = 'acme-sf'")
    assert (row["tenant"], row["crm"], row["base_url"], row["token_hint"]) == (
        "acme", "salesforce", "http://127.0.0.1:9001", "…9z8y"
    )  # fmt: skip
    # Stored sealed: no column holds the token, and the key opens it again.
    assert all(TOKEN not in str(v) for v in row.values())
    keys = vault.keyring(Settings().secret_key)
    assert keys.open("acme-sf", row["secrets"]) == {"token": TOKEN}
    assert orjson.loads(row["rate_limits"]) == [
        {"limit": 100, "window_ms": 1000},
        {"limit": 1000, "window_ms": 10_000},
        {"limit": 100000, "window_ms": 86_400_000},
    ]
    assert orjson.loads(row["settings"]) == {"api_version": "v61.0", "batch_size": 50}
    (hs_row,) = fetch_now(database_url, "SELECT crm, rate_limits FROM connections WHERE id = 'hs1'")
    assert hs_row["crm"] == "hubspot"
    assert orjson.loads(hs_row["rate_limits"]) == [{"limit": 100, "window_ms": 10_000}]

    table = _cli(database_url, "list")
    assert table.exit_code == 0, table.output
    assert "acme-sf" in table.output and "hs1" in table.output
    assert "100/s, 1000/10s, 100000/day" in table.output
    assert TOKEN not in table.output
    assert "…9z8y" in table.output and "00D" not in table.output

    assert _cli(database_url, "pause", "acme-sf", "--reason", "token rotation").exit_code == 0
    listed = {c["id"]: c for c in orjson.loads(_cli(database_url, "list", "--json").stdout)}
    assert listed["acme-sf"]["paused_reason"] == "token rotation"
    assert listed["acme-sf"]["token"] == "…9z8y"
    assert listed["hs1"]["paused"] is False
    assert _cli(database_url, "pause", "hs1").exit_code == 0
    assert _cli(database_url, "resume", "acme-sf").exit_code == 0
    reasons = dict(
        (r["id"], r["paused_reason"])
        for r in fetch_now(database_url, "SELECT id, paused_reason FROM connections")
    )
    assert reasons == {"acme-sf": None, "hs1": "paused by operator"}

    assert _cli(database_url, "remove", "hs1", "--yes").exit_code == 0
    assert [r["id"] for r in fetch_now(database_url, "SELECT id FROM connections")] == ["acme-sf"]


def test_duplicate_and_unknown_ids_are_user_errors(database_url: str) -> None:
    assert _add(database_url, "dup").exit_code == 0
    again = _add(database_url, "dup")
    assert isinstance(again.exception, UserError)
    assert str(again.exception) == "connection 'dup' already exists"
    for cmd in (("remove", "--yes"), ("pause",), ("resume",), ("update", "--no-check")):
        res = _cli(database_url, cmd[0], "ghost", *cmd[1:])
        assert isinstance(res.exception, UserError)
        assert "no connection 'ghost'" in str(res.exception)


@pytest.mark.parametrize(
    ("changes", "flag"),
    [
        ({"id": "bad id"}, "connection id"),
        ({"crm": "pipedrive"}, "--crm"),
        ({"account": " "}, "--account"),
        ({"base_url": "ftp://x"}, "--base-url"),
        ({"base_url": "localhost:8080"}, "--base-url"),
        ({"token": " "}, "--token"),
        ({"tenant": "a/b"}, "--tenant"),
        ({"rate_limits": ["100/fortnight"]}, "--rate-limit"),
        ({"rate_limits": ["0/s"]}, "--rate-limit"),
        ({"rate_limits": ["100/s", "50/1s"]}, "--rate-limit"),
        ({"settings": ["novalue"]}, "--settings"),
    ],
)
def test_add_validation_names_the_flag(changes: dict[str, Any], flag: str) -> None:
    base: dict[str, Any] = {
        "id": "c1",
        "crm": "salesforce",
        "account": "acme",
        "base_url": "https://acme.my.salesforce.com",
        "token": "t",
    }
    with pytest.raises(UserError) as exc:
        connections.parse_connection(**{**base, **changes})
    assert flag in str(exc.value)


@pytest.mark.parametrize(
    ("token", "masked"),
    [
        ("sk-live-abcdef-a1b2", "…a1b2"),
        ("0123456789ab", "…89ab"),
        ("abcdefgh", "…efgh"),
        ("abcdefg", "…"),
        ("abc", "…"),
        ("", "…"),
    ],
)
def test_tokens_show_their_last_4_characters_at_most(token: str, masked: str) -> None:
    assert redact.mask(token) == masked


@given(st.text(max_size=200))
def test_no_token_shows_more_than_4_characters_or_half_of_itself(token: str) -> None:
    shown = redact.mask(token).removeprefix("…")
    assert token.endswith(shown)
    assert len(shown) <= 4 and len(shown) * 2 <= len(token)


async def test_changes_notify_workers_and_remove_cascades(
    pg: asyncpg.Connection[Any], database_url: str
) -> None:
    heard: list[str] = []
    listener = await asyncpg.connect(database_url)
    await listener.add_listener("crmsync_connections", lambda *a: heard.append(a[3]))
    try:
        spec = connections.parse_connection(
            id="n1", crm="hubspot", account="p", base_url="http://hs", token="tok-123456789"
        )
        await connections.add(pg, spec, vault.keyring(vault.new_key()))
        await connections.pause(pg, "n1", "  ")
        assert await pg.fetchval("SELECT paused_reason FROM connections") == "paused by operator"
        await connections.resume(pg, "n1")
        await pg.execute(
            "INSERT INTO sync_state (connection_id, contact_id, status) "
            "VALUES ('n1', 'a', 'synced')"
        )
        await pg.execute(
            "INSERT INTO dead_letters (connection_id, contact_id, operation, error) "
            "VALUES ('n1', 'a', 'create', 'x')"
        )
        await connections.remove(pg, "n1")
        for _ in range(50):
            if len(heard) >= 4:
                break
            await asyncio.sleep(0.02)
        assert heard == ["n1", "n1", "n1", "n1"]
        assert await pg.fetchval("SELECT count(*) FROM sync_state") == 0
        assert await pg.fetchval("SELECT count(*) FROM dead_letters") == 0
        listed = await connections.list_all(pg)
        assert listed == []
    finally:
        await listener.close()
