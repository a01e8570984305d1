"""What resolving dead letters costs the worker's one ledger statement per claim:
``worker_record`` as it is (the ledger upsert, then an index probe of the open
dead letters of each synced contact) against the ledger upsert alone, side by
side on one database, claims of 1 and of 200 rows, beside 20,000 open letters.

    .venv/bin/python benchmarks/ledger_record.py [--database-url postgresql://.../crmsync]

Uses (drops and recreates) the database ``crmsync_bench_ledger`` on that server.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

import asyncpg

from crmsync import db

# The statement before dead letters resolved themselves: the baseline.
LEDGER_ONLY = """
INSERT INTO sync_state AS s
    (connection_id, contact_id, external_id, synced_version, status, rule, attempts,
     last_error, updated_at)
SELECT $1, u.contact_id, u.external_id, u.synced_version, u.status, u.rule, u.attempts,
       u.last_error, now()
FROM unnest($2::text[], $3::text[], $4::bigint[], $5::text[], $6::text[], $7::int[], $8::text[])
     AS u(contact_id, external_id, synced_version, status, rule, attempts, last_error)
ON CONFLICT (connection_id, contact_id) DO UPDATE SET
    external_id = COALESCE(EXCLUDED.external_id, s.external_id),
    synced_version = COALESCE(EXCLUDED.synced_version, s.synced_version),
    status = EXCLUDED.status, rule = EXCLUDED.rule, attempts = EXCLUDED.attempts,
    last_error = EXCLUDED.last_error, updated_at = now()
WHERE s.synced_version IS NULL OR EXCLUDED.synced_version IS NULL
   OR EXCLUDED.synced_version >= s.synced_version
"""
ROUNDS = 300


def _args(prefix: str, n: int, version: int) -> list[object]:
    ids = [f"{prefix}{i}" for i in range(n)]
    return [
        "sf",
        ids,
        [f"X{i}" for i in ids],
        [version] * n,
        ["synced"] * n,
        [None] * n,
        [0] * n,
        [None] * n,
    ]


async def _time(conn: asyncpg.Connection[object], sql: str, prefix: str, n: int) -> list[float]:
    out = []
    for r in range(ROUNDS):
        args = _args(prefix, n, r + 1)
        t0 = time.perf_counter()
        await conn.execute(sql, *args)
        out.append((time.perf_counter() - t0) * 1000)
    return out


async def main(url: str) -> None:
    name = "crmsync_bench_ledger"
    admin = await asyncpg.connect(url)
    await admin.execute(f"DROP DATABASE IF EXISTS {name}")
    await admin.execute(f"CREATE DATABASE {name}")
    await admin.close()
    dsn = url.rsplit("/", 1)[0] + f"/{name}"
    conn = await db.connect(dsn)
    try:
        await db.migrate(conn)
        await conn.execute(
            "INSERT INTO connections (id, tenant, crm, account, base_url, token_hint, rate_limits,"
            " settings) VALUES ('sf', 'default', 'salesforce', 'a', 'http://x', '…', '[]', '{}')"
        )
        await conn.execute(
            "INSERT INTO dead_letters (connection_id, contact_id, version, operation, error,"
            " attempts) SELECT 'sf', 'dead' || g, 1, 'create', 'x', 3"
            " FROM generate_series(1, 20000) g"
        )
        await conn.execute("ANALYZE")
        for n in (1, 200):
            now_: list[float] = []
            before: list[float] = []
            for _ in range(3):  # alternated, so both see the same machine
                before += await _time(conn, LEDGER_ONLY, f"b{n}-", n)
                now_ += await _time(conn, db.q("worker_record"), f"a{n}-", n)
            mb, ma = statistics.median(before), statistics.median(now_)
            print(
                f"claims of {n} rows: ledger upsert alone median {mb:.3f} ms, with the dead"
                f" letters' resolution {ma:.3f} ms: ratio {ma / mb:.2f}"
            )
    finally:
        await conn.close()
        admin = await asyncpg.connect(url)
        await admin.execute(f"DROP DATABASE IF EXISTS {name}")
        await admin.close()


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--database-url", default="postgresql://127.0.0.1:5432/crmsync")
    a = p.parse_args()
    asyncio.run(main(a.database_url))
