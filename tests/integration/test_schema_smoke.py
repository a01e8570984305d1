from __future__ import annotations

from typing import Any

import asyncpg


async def test_insert_writes_outbox(pg: asyncpg.Connection[Any]) -> None:
    await pg.execute("INSERT INTO contacts (id, email) VALUES ('a', 'a@example.com')")
    rows = await pg.fetch("SELECT contact_id, op, version FROM outbox")
    assert [tuple(r) for r in rows] == [("a", "insert", 1)]
    await pg.execute("UPDATE contacts SET email = email WHERE id = 'a'")
    assert await pg.fetchval("SELECT count(*) FROM outbox") == 1
    await pg.execute("UPDATE contacts SET email = 'b@example.com' WHERE id = 'a'")
    await pg.execute("DELETE FROM contacts WHERE id = 'a'")
    rows = await pg.fetch("SELECT op, version FROM outbox ORDER BY id")
    assert [tuple(r) for r in rows] == [("insert", 1), ("update", 2), ("delete", 3)]
