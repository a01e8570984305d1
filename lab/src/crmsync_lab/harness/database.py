"""The harness's database: named like the configured one, fresh when asked, migrated."""

from __future__ import annotations

from crmsync import db
from crmsync.contacts import ID_RE
from crmsync.errors import UserError

SYSTEM_DATABASES = ("postgres", "template0", "template1")


def scratch_database(name: str) -> str:
    """``name`` if it may be dropped and recreated (the demo's and the bench's
    ``--database``), else a one-sentence error naming the flag."""
    if not ID_RE.fullmatch(name) or name in SYSTEM_DATABASES:
        raise UserError(
            f"--database {name!r} must be a plain name of a scratch database to drop and recreate"
        )
    return name


def database_named(url: str, name: str) -> str:
    """``url`` with its database name replaced (query string kept)."""
    base, _, rest = url.rpartition("/")
    _, _, params = rest.partition("?")
    return f"{base}/{name}" + (f"?{params}" if params else "")


async def recreate_database(url: str) -> None:
    """Drop the database named in ``url`` (closing its sessions) and create it anew."""
    name = url.rpartition("/")[2].partition("?")[0]
    admin = await db.connect(database_named(url, "postgres"))
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()


async def prepare_database(url: str, *, fresh: bool = False) -> None:
    """Create (``fresh``: drop and recreate) the database of ``url`` and migrate it."""
    if fresh:
        await recreate_database(url)
    await db.ensure_database(url)
    conn = await db.connect(url)
    try:
        await db.migrate(conn)
    finally:
        await conn.close()
