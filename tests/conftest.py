"""Shared fixtures: a fresh PostgreSQL database per test (cloned from a migrated
template) and a private, flushed Redis database per test (real servers only);
on them, a pool, Redis clients and a MONITOR log; mock CRMs in this process,
crmsync processes, and the whole system as a cluster of processes (the lab's
harness). Helpers and the factories' types are in support.py. A real Redis
Cluster (3 masters + 3 replicas, started once per session) serves the tests
that run in both Redis modes (``any_redis``)."""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import fcntl
import hashlib
import importlib.util
import os
import shutil
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from types import ModuleType
from typing import IO, Any

import aiohttp
import asyncpg
import httpx
import pytest
import redis.asyncio as aioredis

from crmsync import db, vault
from crmsync.api.app import create_app
from crmsync.redis_client import RedisClient, open_redis
from crmsync.settings import REDIS_MODES, RedisMode, Settings
from crmsync_lab.harness.cluster import ClusterConfig
from crmsync_lab.harness.processes import Proc, crmsync_argv, stop_all
from crmsync_lab.mock.config import AccountSpec, MockConfig
from crmsync_lab.mock.server import MockHandle, start_mock
from support import OpenApi, RedisMonitor, StartCrmsync, StartMock, asgi_client

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
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool[Any]]:
    """A small pool on this test's database."""
    p = await db.create_pool(database_url, min_size=1, max_size=6)
    try:
        yield p
    finally:
        await p.close()


@pytest.fixture
async def api_client(pool: asyncpg.Pool[Any], settings: Settings) -> AsyncIterator[OpenApi]:
    """Opens the HTTP API in this process on this test's pool and Redis (the
    ``settings`` fixture's key ``test-key``, unless the call changes it)."""
    opened: list[httpx.AsyncClient] = []

    async def open_api(**changes: Any) -> httpx.AsyncClient:
        app = create_app(settings.model_copy(update=changes), pool=pool)
        opened.append(await asgi_client(app).__aenter__())
        return opened[-1]

    try:
        yield open_api
    finally:
        for client in opened:
            await client.__aexit__(None, None, None)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """An HTTP client session (to talk to mock CRMs directly), closed after the test."""
    async with aiohttp.ClientSession() as s:
        yield s


@pytest.fixture
async def redis_clients(redis_url: str) -> AsyncIterator[Callable[[], aioredis.Redis]]:
    """Opens clients of this test's Redis database; each is closed after the test."""
    opened: list[aioredis.Redis] = []

    def open_client() -> aioredis.Redis:
        opened.append(aioredis.from_url(redis_url))
        return opened[-1]

    try:
        yield open_client
    finally:
        for r in opened:
            await r.aclose()


@pytest.fixture
def redis_client(redis_clients: Callable[[], aioredis.Redis]) -> aioredis.Redis:
    return redis_clients()


@pytest.fixture
async def redis_monitor(redis_clients: Callable[[], aioredis.Redis]) -> AsyncIterator[RedisMonitor]:
    """MONITOR on a client of its own, from before the test runs until after it."""
    client = redis_clients()
    dbn = client.connection_pool.connection_kwargs.get("db", 0)
    log = RedisMonitor()
    async with client.monitor() as m:  # MONITOR is on once this returns

        async def read() -> None:
            while True:
                cmd: dict[str, Any] = await m.next_command()
                if cmd["db"] == dbn:
                    log.add(cmd)

        reader = asyncio.create_task(read())
        try:
            yield log
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader


@pytest.fixture
async def start_mock_crm() -> AsyncIterator[StartMock]:
    """Starts mock CRMs in this process (a free port each); all closed after the test."""
    handles: list[MockHandle] = []

    async def start(
        *accounts: AccountSpec,
        latency_ms: float = 0.0,
        jitter_ms: float = 0.0,
        seed: int | None = None,
    ) -> MockHandle:
        config = MockConfig(list(accounts), latency_ms=latency_ms, jitter_ms=jitter_ms, seed=seed)
        handles.append(await start_mock(config))
        return handles[-1]

    try:
        yield start
    finally:
        for handle in handles:
            await handle.close()


@pytest.fixture
async def crmsync_process(
    database_url: str, redis_url: str, tmp_path: Path
) -> AsyncIterator[StartCrmsync]:
    """Starts ``crmsync <args>`` on this test's database and Redis, its output in
    ``tmp_path/logs``; every one still running is stopped after the test."""
    started: list[Proc] = []

    async def start(*args: str, env: Mapping[str, str] | None = None) -> Proc:
        full = {
            **os.environ,
            "CRMSYNC_DATABASE_URL": database_url,
            "CRMSYNC_REDIS_URL": redis_url,
            **(env or {}),
        }
        name = f"{args[0]}-{len(started) + 1}"
        proc = Proc(name, crmsync_argv(*args), full, tmp_path / "logs")
        await proc.start()
        started.append(proc)
        return proc

    try:
        yield start
    finally:
        await stop_all(started, grace=20.0)


@pytest.fixture
def cluster_config(database_url: str, redis_url: str, tmp_path: Path) -> ClusterConfig:
    """The whole system as processes (``crmsync api``, ``relay`` and workers apart) on
    this test's database and Redis, logs in ``tmp_path/run``; ``dataclasses.replace``
    sets what a test needs."""
    return ClusterConfig(
        database_url=database_url,
        redis_url=redis_url,
        mode="split",
        run_dir=tmp_path / "run",
        grace_seconds=5.0,
    )


# ---------------------------------------------------------------- Redis Cluster

ROOT = Path(__file__).resolve().parent.parent


def _load_cluster_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "redis_cluster", ROOT / "scripts" / "redis_cluster.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


redis_cluster_script = _load_cluster_script()


@dataclass(frozen=True)
class LocalCluster:
    """A running Redis Cluster; ``home`` is None for one given by
    CRMSYNC_TEST_REDIS_CLUSTER_URL (no failover helpers then)."""

    url: str
    home: Path | None

    def _home(self) -> Path:
        if self.home is None:
            pytest.skip("failover needs a cluster the tests started (not CRMSYNC_TEST_...)")
        return self.home

    def flush(self) -> None:
        """FLUSHALL on every master, as seen by the seed."""
        rc = redis_cluster_script
        port = int(self.url.rsplit(":", 1)[1].split("/")[0])
        if self.home is not None:
            seed = rc.seed_url(self.home)
            assert seed is not None, "no node of the test cluster answers"
            port = int(seed.rsplit(":", 1)[1])
        for line in rc.text(port, "CLUSTER", "NODES").splitlines():
            parts = line.split()
            if "master" in parts[2] and "fail" not in parts[2] and len(parts) > 8:
                rc.command(int(parts[1].split("@")[0].rsplit(":", 1)[1]), "FLUSHALL")

    def kill_master(self, slot: int) -> Any:
        """SIGKILL the master of ``slot``; the killed node (for ``restart``)."""
        return redis_cluster_script.kill_master(self._home(), slot)

    def seed_list(self) -> str:
        """Every node of the cluster as one CRMSYNC_REDIS_URL (any may be down)."""
        return str(redis_cluster_script.seed_list(self._home()))

    def kill_master_unreplicated(self, slot: int, seconds: float = 1.0) -> Any:
        """SIGKILL the master of ``slot`` after ``seconds`` of writes its replica
        never got (they are lost when it takes over); the killed node."""
        return redis_cluster_script.kill_master_unreplicated(self._home(), slot, seconds)

    def wait_promoted(self, slot: int, dead: Any, seconds: float = 30.0) -> Any:
        return redis_cluster_script.wait_promoted(self._home(), slot, dead, seconds)

    def restart(self, node: Any) -> None:
        redis_cluster_script.restart(self._home(), node)


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[LocalCluster]:
    """The project's cluster (``.crmsync/redis-cluster``, started if needed and
    left running, as ``make setup`` leaves its servers); a run that finds another
    run of this folder using it starts a private one and removes it afterwards."""
    explicit = os.environ.get("CRMSYNC_TEST_REDIS_CLUSTER_URL")
    if explicit:
        yield LocalCluster(explicit, None)
        return
    shared = ROOT / ".crmsync" / "redis-cluster"
    shared.parent.mkdir(parents=True, exist_ok=True)
    lock = open(shared.parent / "redis-cluster.session.lock", "w")  # noqa: SIM115
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        lock.close()
        private = Path(tempfile.mkdtemp(prefix="crmsync-cluster-", dir=shared.parent))
        try:
            yield LocalCluster(redis_cluster_script.start(private), private)
        finally:
            redis_cluster_script.stop(private, purge=True)
            shutil.rmtree(private, ignore_errors=True)
        return
    try:
        yield LocalCluster(redis_cluster_script.start(shared), shared)
    finally:
        lock.close()


@pytest.fixture
def redis_cluster_url(redis_cluster: LocalCluster) -> Iterator[str]:
    """The session's cluster, flushed before and after the test."""
    redis_cluster.flush()
    yield redis_cluster.url
    with contextlib.suppress(OSError):  # a failover test may leave a node down
        redis_cluster.flush()


@pytest.fixture(params=REDIS_MODES)
def redis_mode(request: pytest.FixtureRequest) -> RedisMode:
    mode: RedisMode = request.param
    return mode


@pytest.fixture
def any_redis_url(redis_mode: RedisMode, request: pytest.FixtureRequest) -> str:
    """A flushed Redis of the test's mode: the cluster starts only when needed."""
    url: str = request.getfixturevalue(
        "redis_url" if redis_mode == "standalone" else "redis_cluster_url"
    )
    return url


@pytest.fixture
async def connect_redis(
    any_redis_url: str, redis_mode: RedisMode
) -> AsyncIterator[Callable[[], Awaitable[RedisClient]]]:
    """Opens more clients of the test's mode (several workers' view); all closed after."""
    opened: list[RedisClient] = []

    async def connect() -> RedisClient:
        client = await open_redis(any_redis_url, redis_mode)
        opened.append(client)
        return client

    try:
        yield connect
    finally:
        for client in opened:
            await client.aclose()


@pytest.fixture
async def any_redis(connect_redis: Callable[[], Awaitable[RedisClient]]) -> RedisClient:
    """A client of each Redis mode: a test using it runs on one server and on the cluster."""
    return await connect_redis()
