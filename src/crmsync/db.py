"""PostgreSQL access: pools, named queries from ``sql/queries/*.sql``, migrations."""

from __future__ import annotations

import re
from importlib import resources
from typing import TYPE_CHECKING, Any, TypeAlias

import asyncpg
import orjson

from crmsync.errors import UserError

if TYPE_CHECKING:
    from asyncpg.pool import PoolConnectionProxy

    # Whatever runs a statement: a pool, a connection, or one taken from a pool.
    Executor: TypeAlias = asyncpg.Pool[Any] | asyncpg.Connection[Any] | PoolConnectionProxy[Any]

_QUERY_NAME = re.compile(r"^--\s*name:\s*(\S+)\s*$", re.MULTILINE)


class NamedQueries:
    """The named queries of a package's ``.sql`` files, read once on first use: a
    ``-- name: foo`` line starts query ``foo``. Another distribution (the lab) loads
    its own files with one of these."""

    def __init__(self, package: str, folder: str) -> None:
        self.package = package
        self.folder = folder
        self._queries: dict[str, str] | None = None

    def all(self) -> dict[str, str]:
        if self._queries is None:
            self._queries = self._load()
        return self._queries

    def __call__(self, name: str) -> str:
        try:
            return self.all()[name]
        except KeyError:
            raise KeyError(f"no SQL query named {name!r} in {self.package}/{self.folder}") from None

    def _load(self) -> dict[str, str]:
        out: dict[str, str] = {}
        folder = resources.files(self.package).joinpath(*self.folder.split("/"))
        for entry in sorted(folder.iterdir(), key=lambda p: p.name):
            if not entry.name.endswith(".sql"):
                continue
            parts = _QUERY_NAME.split(entry.read_text())
            # parts: [preamble, name1, body1, name2, body2, ...]
            for name, body in zip(parts[1::2], parts[2::2], strict=True):
                if name in out:
                    raise RuntimeError(f"duplicate query name {name!r} in {entry.name}")
                out[name] = body.strip().rstrip(";")
        return out


q = NamedQueries("crmsync", "sql/queries")


async def _init_connection(conn: asyncpg.Connection[Any]) -> None:
    for typ in ("jsonb", "json"):
        await conn.set_type_codec(
            typ,
            encoder=lambda v: orjson.dumps(v).decode(),
            decoder=orjson.loads,
            schema="pg_catalog",
        )


async def connect(dsn: str) -> asyncpg.Connection[Any]:
    try:
        conn: asyncpg.Connection[Any] = await asyncpg.connect(dsn)
    except (OSError, asyncpg.PostgresError) as exc:
        raise UserError(
            f"cannot reach PostgreSQL at {redact_dsn(dsn)} ({exc}); "
            "set CRMSYNC_DATABASE_URL or run `make setup`"
        ) from exc
    await _init_connection(conn)
    return conn


async def _rollback_if_needed(conn: asyncpg.Connection[Any]) -> None:
    if conn.is_in_transaction():
        await conn.execute("ROLLBACK")


async def create_pool(
    dsn: str, *, min_size: int = 1, max_size: int = 10, light_reset: bool = False
) -> asyncpg.Pool[Any]:
    """``light_reset``: on release only roll back an open transaction, instead of
    asyncpg's full reset query (a round trip per release). For pools whose
    users never change session state, LISTEN or take advisory locks (workers)."""
    try:
        pool = await asyncpg.create_pool(
            dsn,
            min_size=min_size,
            max_size=max_size,
            init=_init_connection,
            reset=_rollback_if_needed if light_reset else None,
        )
    except (OSError, asyncpg.PostgresError) as exc:
        raise UserError(
            f"cannot reach PostgreSQL at {redact_dsn(dsn)} ({exc}); "
            "set CRMSYNC_DATABASE_URL or run `make setup`"
        ) from exc
    assert pool is not None
    return pool


def redact_dsn(dsn: str) -> str:
    return re.sub(r"://([^:@/]+):[^@/]*@", r"://\1:***@", dsn)


def _migrations() -> list[tuple[int, str, str]]:
    folder = resources.files("crmsync") / "sql" / "migrations"
    found = []
    for entry in folder.iterdir():
        m = re.match(r"^(\d{4})_(\w+)\.sql$", entry.name)
        if m:
            found.append((int(m.group(1)), entry.name, entry.read_text()))
    return sorted(found)


async def migrate(conn: asyncpg.Connection[Any]) -> list[str]:
    """Apply every migration not yet recorded; returns the names applied."""
    applied_now: list[str] = []
    # One advisory lock so concurrent `migrate` runs do not race.
    await conn.execute("SELECT pg_advisory_lock(727274)")
    try:
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version integer PRIMARY KEY, name text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
        for version, name, sql in _migrations():
            if version in done:
                continue
            async with conn.transaction():
                await conn.execute(sql)
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", version, name
                )
            applied_now.append(name)
    finally:
        await conn.execute("SELECT pg_advisory_unlock(727274)")
    return applied_now


async def ensure_database(dsn: str) -> None:
    """Create the database named in ``dsn`` if it does not exist."""
    base, _, rest = dsn.rpartition("/")
    dbname, _, params = rest.partition("?")
    admin_dsn = f"{base}/postgres" + (f"?{params}" if params else "")
    try:
        conn = await asyncpg.connect(dsn)
        await conn.close()
        return
    except asyncpg.InvalidCatalogNameError:
        pass
    except (OSError, asyncpg.PostgresError) as exc:
        raise UserError(
            f"cannot reach PostgreSQL at {redact_dsn(dsn)} ({exc}); "
            "set CRMSYNC_DATABASE_URL or run `make setup`"
        ) from exc
    admin = await asyncpg.connect(admin_dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{dbname}"')
    except asyncpg.DuplicateDatabaseError:
        pass
    finally:
        await admin.close()
