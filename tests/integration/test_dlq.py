"""Dead letters: list, replay and purge, filtered by connection, error and id."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import asyncpg
import orjson
import pytest
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from typer.testing import CliRunner

from crmsync import dlq
from crmsync.cli import app
from crmsync.dlq import DeadFilter
from crmsync.errors import UserError
from crmsync.queue import keys
from crmsync.queue.store import BAND_SCALE, Band, QueueStore
from crmsync.settings import Settings
from support import add_connections, connection

# (connection, contact, operation, error_code, error, http_status)
LETTERS = [
    ("sf", "c1", "update", "INVALID_EMAIL_ADDRESS", "Email: invalid email address: bad", 400),
    (
        "sf",
        "c2",
        "create",
        "REQUIRED_FIELD_MISSING",
        "Required fields are missing: [LastName]",
        400,
    ),
    ("sf", "c3", "delete", None, "503 Service Unavailable after 3 attempts", 503),
    ("hs", "c1", "create", "VALIDATION_ERROR", "Property values were not valid: email", 400),
    ("hs", "c4", "update", None, "Service Unavailable", 503),
]


@pytest.fixture
async def pool(pool: asyncpg.Pool[Any]) -> asyncpg.Pool[Any]:
    """The test's pool: two connections, four contacts and the dead letters of ``LETTERS``."""
    await add_connections(pool, [connection("sf", "salesforce"), connection("hs", "hubspot")])
    await pool.execute(
        "INSERT INTO contacts (id, email) VALUES ('c1', 'bad'), ('c2', 'b@x.io'),"
        " ('c3', 'c@x.io'), ('c4', 'd@x.io')"
    )
    await pool.execute("UPDATE contacts SET deleted_at = now() WHERE id = 'c3'")
    await pool.execute("DELETE FROM outbox")
    # Ledger rows as the worker leaves them: dead, attempts spent, CRM id kept.
    await pool.executemany(
        "INSERT INTO sync_state (connection_id, contact_id, external_id, synced_version,"
        " status, attempts, last_error) VALUES ($1, $2, $3, $4, 'dead', 3, 'x')",
        [
            (
                "sf",
                "c1",
                "X1",
                1,
            ),
            ("sf", "c2", None, None),
            ("sf", "c3", "X3", 1),
            ("hs", "c1", None, None),
            ("hs", "c4", "H4", 1),
        ],
    )
    await pool.executemany(
        "INSERT INTO dead_letters (connection_id, contact_id, version, operation, error_code,"
        " error, http_status, payload, attempts) VALUES ($1, $2, 1, $3, $4, $5, $6, $7, 3)",
        [(*letter, {"email": "x"}) for letter in LETTERS],
    )
    return pool


def pairs(rows: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(r["connection_id"], r["contact_id"]) for r in rows]


async def queued(r: aioredis.Redis, cid: str) -> dict[str, int]:
    entries = cast(
        "list[tuple[bytes, float]]",
        await r.zrange(keys.connection(cid).ready, 0, -1, withscores=True),
    )
    return {k.decode(): int(s) // BAND_SCALE for k, s in entries}


@pytest.mark.parametrize(
    ("f", "expected"),
    [
        (DeadFilter(), [(c, k) for c, k, *_ in LETTERS]),
        (DeadFilter(connection="hs"), [("hs", "c1"), ("hs", "c4")]),
        (DeadFilter(error="unavailable"), [("sf", "c3"), ("hs", "c4")]),
        (DeadFilter(error="invalid_email"), [("sf", "c1")]),  # matches the error code
        (DeadFilter(connection="sf", error="EMAIL"), [("sf", "c1")]),
        (DeadFilter(error="%"), []),  # no wildcards
        (DeadFilter(error="[LastName]"), [("sf", "c2")]),
    ],
)
async def test_list_filters(pool: asyncpg.Pool[Any], f: DeadFilter, expected: list[Any]) -> None:
    rows, total = await dlq.list_dead(pool, f)
    assert pairs(rows) == expected
    assert total == len(expected)


async def test_list_limit_ids_and_content(pool: asyncpg.Pool[Any]) -> None:
    rows, total = await dlq.list_dead(pool, limit=2)
    assert (len(rows), total) == (2, 5)
    first = rows[0]
    assert first["error"] == LETTERS[0][4] and first["http_status"] == 400
    assert first["payload"] == {"email": "x"} and first["attempts"] == 3
    rows, total = await dlq.list_dead(pool, DeadFilter(ids=(rows[1]["id"],)))
    assert pairs(rows) == [("sf", "c2")] and total == 1
    with pytest.raises(UserError, match="'nope'"):
        await dlq.list_dead(pool, DeadFilter(connection="nope"))


async def test_replay_requeues_resets_ledger_and_removes_letters(
    pool: asyncpg.Pool[Any], redis_client: aioredis.Redis
) -> None:
    store = QueueStore(redis_client)
    with pytest.raises(UserError, match="--all"):
        await dlq.replay(pool, store, DeadFilter())

    assert await dlq.replay(pool, store, DeadFilter(connection="sf")) == 3
    # band by what the CRM has now: c1 exists there, c2 never made it, c3 is deleted here
    assert await queued(redis_client, "sf") == {
        "c1": Band.UPDATE,
        "c2": Band.CREATE,
        "c3": Band.DELETE,
    }
    assert await queued(redis_client, "hs") == {}
    rows, _ = await dlq.list_dead(pool)
    assert pairs(rows) == [("hs", "c1"), ("hs", "c4")]
    ledger = {
        (r["connection_id"], r["contact_id"]): (r["status"], r["attempts"])
        for r in await pool.fetch(
            "SELECT connection_id, contact_id, status, attempts FROM sync_state"
        )
    }
    assert ledger == {
        ("sf", "c1"): ("retrying", 0),
        ("sf", "c2"): ("retrying", 0),
        ("sf", "c3"): ("retrying", 0),
        ("hs", "c1"): ("dead", 3),
        ("hs", "c4"): ("dead", 3),
    }

    assert await dlq.replay(pool, store, DeadFilter(error="unavailable")) == 1
    assert await queued(redis_client, "hs") == {"c4": Band.UPDATE}
    assert await dlq.replay(pool, store, DeadFilter(), all_=True) == 1
    assert await queued(redis_client, "hs") == {"c1": Band.CREATE, "c4": Band.UPDATE}
    assert (await dlq.list_dead(pool))[1] == 0


async def test_replay_keeps_letters_when_redis_fails(pool: asyncpg.Pool[Any]) -> None:
    unreachable = aioredis.from_url("redis://127.0.0.1:1/0")
    try:
        with pytest.raises(RedisConnectionError):
            await dlq.replay(pool, QueueStore(unreachable), DeadFilter(connection="sf"))
    finally:
        await unreachable.aclose()
    assert (await dlq.list_dead(pool))[1] == 5
    assert await pool.fetchval("SELECT count(*) FROM sync_state WHERE status = 'dead'") == 5


async def test_purge(pool: asyncpg.Pool[Any]) -> None:
    with pytest.raises(UserError, match="--all"):
        await dlq.purge(pool, DeadFilter())
    assert await dlq.purge(pool, DeadFilter(connection="sf", error="required")) == 1
    assert await dlq.purge(pool, DeadFilter(connection="hs")) == 2
    rows, total = await dlq.list_dead(pool)
    assert pairs(rows) == [("sf", "c1"), ("sf", "c3")] and total == 2
    assert await dlq.purge(pool, DeadFilter(), all_=True) == 2
    assert (await dlq.list_dead(pool))[1] == 0


async def test_cli(
    pool: asyncpg.Pool[Any], settings: Settings, redis_client: aioredis.Redis
) -> None:
    env = {
        "CRMSYNC_DATABASE_URL": settings.database_url,
        "CRMSYNC_REDIS_URL": settings.redis_url,
        "COLUMNS": "250",  # rich would cut the table at 80 columns
    }

    async def cli(*args: str) -> Any:
        # The CLI runs its own event loop: give it a thread.
        return await asyncio.to_thread(CliRunner().invoke, app, ["dlq", *args], env=env)

    res = await cli("list", "--connection", "sf")
    assert res.exit_code == 0, res.output
    assert "3 of 3 dead letter(s)" in res.output and "INVALID_EMAIL_ADDRESS" in res.output

    res = await cli("list", "--error", "unavailable", "--json")
    assert res.exit_code == 0, res.output
    out = orjson.loads(res.output)
    assert out["total"] == 2 and [d["contact_id"] for d in out["dead_letters"]] == ["c3", "c4"]

    res = await cli("replay")
    assert res.exit_code != 0 and "--all" in str(res.exception)
    res = await cli("replay", "--connection", "hs", "--error", "valid")
    assert res.exit_code == 0, res.output
    assert "replayed 1" in res.output
    assert await queued(redis_client, "hs") == {"c1": Band.CREATE}

    res = await cli("purge", "--connection", "sf")  # no TTY in the test runner
    assert res.exit_code != 0 and "--yes" in str(res.exception)
    res = await cli("purge", "--connection", "sf", "--yes")
    assert res.exit_code == 0, res.output
    assert "purged 3" in res.output
    assert (await dlq.list_dead(pool))[1] == 1


async def test_a_later_sync_resolves_the_letters_and_every_count_agrees(
    pool: asyncpg.Pool[Any], settings: Settings
) -> None:
    """The worker's own write resolves them: status, `dlq list`, /metrics agree."""
    from crmsync.model import LedgerWrite
    from crmsync.report import prometheus_text, status_report
    from crmsync.worker.ledger import PgLedger

    ledger = PgLedger(pool)
    # (sf, c1) synced at version 2: its version-1 letter is resolved. (hs, c4)'s
    # delete went through. (sf, c2) synced an older version than its letter's (a
    # late writer): still open. Another connection's letter of c1 stays open.
    await pool.execute("UPDATE dead_letters SET version = 3 WHERE contact_id = 'c2'")
    await ledger.record("sf", [LedgerWrite("c1", "X1", 2, "synced", None, 0, None)], [])
    await ledger.record("sf", [LedgerWrite("c2", "X2", 2, "synced", None, 0, None)], [])
    await ledger.record("hs", [LedgerWrite("c4", "H4", None, "deleted", None, 0, None)], [])
    await ledger.record("sf", [LedgerWrite("c3", None, None, "retrying", None, 1, "x")], [])
    resolved = {
        (r["connection_id"], r["contact_id"])
        for r in await pool.fetch("SELECT * FROM dead_letters WHERE resolved_at IS NOT NULL")
    }
    assert resolved == {("sf", "c1"), ("hs", "c4")}
    open_now = [("sf", "c2"), ("sf", "c3"), ("hs", "c1")]

    rows, total = await dlq.list_dead(pool)
    assert sorted(pairs(rows)) == sorted(open_now) and total == 3
    rows, _ = await dlq.list_dead(pool, DeadFilter(which="resolved"))
    assert sorted(pairs(rows)) == [("hs", "c4"), ("sf", "c1")]
    assert all(r["resolved_at"] is not None for r in rows)
    assert len((await dlq.list_dead(pool, DeadFilter(which="all")))[0]) == 5

    report = await status_report(pool)
    per = {c["id"]: c["dead_letters"] for c in report["connections"]}
    assert per == {"sf": 2, "hs": 1} and report["totals"]["dead_letters"] == 3
    text = prometheus_text(report).decode()
    assert 'crmsync_dead_letters{connection="sf",crm="salesforce",tenant="default"} 2.0' in text
    assert 'crmsync_dead_letters{connection="hs",crm="hubspot",tenant="default"} 1.0' in text

    env = {"CRMSYNC_DATABASE_URL": settings.database_url}

    def cli(*args: str) -> str:
        res = CliRunner().invoke(app, ["dlq", *args], env=env)
        assert res.exit_code == 0, res.output
        return res.output

    listed = orjson.loads(await asyncio.to_thread(cli, "list", "--json"))
    assert listed["total"] == 3
    listed = orjson.loads(await asyncio.to_thread(cli, "list", "--json", "--resolved"))
    assert listed["total"] == 2
    listed = orjson.loads(await asyncio.to_thread(cli, "list", "--json", "--all"))
    assert listed["total"] == 5
    # A replay has nothing to do for a resolved letter; purge --resolved forgets history.
    assert "purged 2" in await asyncio.to_thread(cli, "purge", "--all", "--resolved", "--yes")
    assert await pool.fetchval("SELECT count(*) FROM dead_letters") == 3
