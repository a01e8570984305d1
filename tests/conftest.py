"""Shared fixtures: a fresh PostgreSQL database per test (cloned from a migrated
template) and a private, flushed Redis database per test. Real servers only."""

from __future__ import annotations

import asyncio
import atexit
import fcntl
import hashlib
import os
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from importlib import resources
from typing import IO, Any

import asyncpg
import pytest
import redis.asyncio as aioredis

from crmsync import db, vault
from crmsync.settings import Settings

# Where tests find the servers: the URLs `make setup` wrote, or the defaults.
BASE_DSN = os.environ.get("CRMSYNC_DATABASE_URL", "postgresql://127.0.0.1:5432/crmsync")
_REDIS_BASE = os.environ.get("CRMSYNC_REDIS_URL", "redis://127.0.0.1:6379/0").rsplit("/", 1)[0]


def _claim_redis_db() -> str:
    """A Redis db number no other test run on this machine is using (9..15).

    Each test flushes its db, so two runs at once (two terminals, a CI job
    beside a developer) must not share one. An flock per db number arbitrates.
    """
    explicit = os.environ.get("CRMSYNC_TEST_REDIS_URL")
    if explicit:
        return explicit
    for n in range(9, 16):
        fh = open(os.path.join(tempfile.gettempdir(), f"crmsync-test-redis-{n}.lock"), "w")  # noqa: SIM115
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.close()
            continue
        _LOCKS.append(fh)  # held until the process exits
        atexit.register(fh.close)
        return f"{_REDIS_BASE}/{n}"
    raise RuntimeError("all test Redis dbs 9-15 are in use by other test runs")


_LOCKS: list[IO[str]] = []
TEST_REDIS_URL = _claim_redis_db()
# The key CRM credentials are sealed with in tests (the environment's, as the
# processes a test starts inherit it, else one for this run).
TEST_SECRET_KEY = os.environ.get("CRMSYNC_SECRET_KEY") or vault.new_key()
os.environ["CRMSYNC_SECRET_KEY"] = TEST_SECRET_KEY


def _dsn_for(dbname: str) -> str:
    base, _, rest = BASE_DSN.rpartition("/")
    _, _, params = rest.partition("?")
    return f"{base}/{dbname}" + (f"?{params}" if params else "")


def _migrations_digest() -> str:
    h = hashlib.sha256()
    folder = resources.files("crmsync") / "sql" / "migrations"
    for entry in sorted(folder.iterdir(), key=lambda p: p.name):
        if entry.name.endswith(".sql"):
            h.update(entry.name.encode())
            h.update(entry.read_bytes())
    return h.hexdigest()[:12]


async def _ensure_template() -> str:
    name = f"crmsync_tpl_{_migrations_digest()}"
    admin = await asyncpg.connect(_dsn_for("postgres"))
    try:
        exists = await admin.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
        if not exists:
            tmp = f"{name}_build_{uuid.uuid4().hex[:6]}"
            await admin.execute(f'CREATE DATABASE "{tmp}"')
            conn = await db.connect(_dsn_for(tmp))
            try:
                await db.migrate(conn)
            finally:
                await conn.close()
            try:
                await admin.execute(f'ALTER DATABASE "{tmp}" RENAME TO "{name}"')
            except asyncpg.DuplicateDatabaseError:
                await admin.execute(f'DROP DATABASE "{tmp}"')
    finally:
        await admin.close()
    return name


@pytest.fixture(scope="session")
def template_db() -> str:
    return asyncio.run(_ensure_template())


@pytest.fixture
def database_url(template_db: str) -> Iterator[str]:
    """A fresh, migrated database for this test only."""
    name = f"crmsync_test_{uuid.uuid4().hex[:10]}"

    async def create() -> None:
        admin = await asyncpg.connect(_dsn_for("postgres"))
        try:
            await admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template_db}"')
        finally:
            await admin.close()

    async def drop() -> None:
        admin = await asyncpg.connect(_dsn_for("postgres"))
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()

    asyncio.run(create())
    try:
        yield _dsn_for(name)
    finally:
        asyncio.run(drop())


@pytest.fixture
def redis_url() -> Iterator[str]:
    """A flushed Redis database reserved for this test run (see _claim_redis_db)."""

    async def flush() -> None:
        r = aioredis.from_url(TEST_REDIS_URL)
        try:
            await r.flushdb()
        finally:
            await r.aclose()

    asyncio.run(flush())
    yield TEST_REDIS_URL
    asyncio.run(flush())


@pytest.fixture
def settings(database_url: str, redis_url: str) -> Settings:
    return Settings(
        database_url=database_url,
        redis_url=redis_url,
        api_keys="test-key",
        secret_key=TEST_SECRET_KEY,
    )


@pytest.fixture
async def pg(database_url: str) -> AsyncIterator[asyncpg.Connection[Any]]:
    conn = await db.connect(database_url)
    try:
        yield conn
    finally:
        await conn.close()


@pytest.fixture
async def redis_client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    r = aioredis.from_url(redis_url)
    try:
        yield r
    finally:
        await r.aclose()
