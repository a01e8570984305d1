"""The whole system as real processes: mock CRMs, API, relay and workers.

Used by ``crmsync demo``, the acceptance tests and the benchmark::

    async with Cluster(ClusterConfig(database_url=..., redis_url=...)) as cluster:
        await cluster.put_contacts(contacts.generate(100))
        assert await cluster.wait_synced(timeout=60)
        report = await cluster.verify()
        assert report.ok, report.problems()

Start order: database (fresh or migrated), mock CRM (``crmsync mock-crm``),
one connection per mock account, the Redis keys of those connections
cleared, then ``crmsync up`` (mode ``"up"``) or ``crmsync api`` +
``crmsync relay`` + N x ``crmsync worker`` (mode ``"split"``, so a test can
SIGKILL one worker alone). Every child logs to ``<run_dir>/<name>.log``; on
exit (also on Ctrl-C / cancellation) all are stopped: SIGTERM, then SIGKILL.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import aiohttp
import asyncpg

from crmsync import connections, db, report, vault
from crmsync.errors import UserError
from crmsync.queue import keys
from crmsync.ratelimit import RateWindow, format_rate
from crmsync.redis_client import RedisClient, open_redis
from crmsync.settings import RedisMode, Settings
from crmsync_lab.harness import mock_client, progress
from crmsync_lab.harness.contacts import Contact, ContactBook, chunks
from crmsync_lab.harness.database import database_named as database_named
from crmsync_lab.harness.database import prepare_database
from crmsync_lab.harness.expect import Report, check_connection
from crmsync_lab.harness.processes import Proc, crmsync_argv, free_port, stop_all
from crmsync_lab.queries import q


class ClusterError(UserError):
    """A process of the cluster failed to start or died; the message names its log."""


@dataclass
class ClusterConfig:
    database_url: str | None = None  # default: CRMSYNC_DATABASE_URL
    redis_url: str | None = None  # default: CRMSYNC_REDIS_URL
    redis_mode: RedisMode | None = None  # default: CRMSYNC_REDIS_MODE
    # Drop and recreate the database named in database_url first (the demo).
    fresh_database: bool = False
    mode: Literal["up", "split"] = "up"
    processes: int = 1  # up: --processes; split: separate `crmsync worker` processes
    concurrency: int = 200
    batch_size: int = 1
    mock_scenario: str = "demo"  # `crmsync mock-crm --scenario`
    mock_args: Sequence[str] = ()  # more mock-crm flags, e.g. ("--latency-ms", "5")
    tenant: str = "default"
    # How connections authenticate: "bearer" (each account's static token) or
    # "oauth" (oauth-refresh with each account's OAuth app: start the mock with
    # --oauth, and --no-static-tokens to be sure no static token is used).
    auth: Literal["bearer", "oauth"] = "bearer"
    settings: Sequence[str] = ()  # --settings KEY=VALUE of every connection
    connection_prefix: str = ""  # connection id = prefix + mock account name
    env: Mapping[str, str] = field(default_factory=dict)  # extra CRMSYNC_* for the children
    run_dir: Path | None = None  # default: .crmsync/runs/<timestamp>
    api_key: str | None = None  # default: a fresh random key
    grace_seconds: float = 10.0
    startup_timeout: float = 30.0
    log_level: str = "info"
    # Niceness of crmsync's own processes. The mock CRM stands for a remote
    # service with CPUs of its own; on one shared host our saturated workers
    # would otherwise starve it, and its stalls bunch arrivals into its windows,
    # which it then counts as our violations. 0 = same priority.
    crmsync_nice: int = 5


@dataclass(frozen=True, slots=True)
class ConnectionInfo:
    id: str
    crm: str  # salesforce | hubspot
    account: str
    base_url: str
    token: str
    rate_limit: str  # e.g. "100/s"


class Cluster:
    """The running system; see the module docstring."""

    def __init__(self, config: ClusterConfig | None = None) -> None:
        self.config = config or ClusterConfig()
        defaults = Settings()
        self.database_url = self.config.database_url or defaults.database_url
        self.redis_url = self.config.redis_url or defaults.redis_url
        self.redis_mode: RedisMode = self.config.redis_mode or defaults.redis_mode
        self.api_key = self.config.api_key or secrets.token_urlsafe(24)
        # CRM tokens are stored sealed under this key (the environment's, else a
        # fresh one); every child gets the same.
        self.secret_key = defaults.secret_key or vault.new_key()
        self.keys = vault.keyring(self.secret_key)
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S") + f"-{secrets.token_hex(2)}"
        self.run_dir = self.config.run_dir or Path(".crmsync") / "runs" / stamp
        self.api_port = free_port()
        self.mock_port = free_port()
        self.api_url = f"http://127.0.0.1:{self.api_port}"
        self.mock_url = f"http://127.0.0.1:{self.mock_port}"
        self.book = ContactBook()
        self.preexisting: set[str] = set()  # emails of records seeded before crmsync
        self.connections: list[ConnectionInfo] = []
        self.mock: Proc | None = None
        self.server: Proc | None = None  # `up`, or `api` in split mode
        self.relay: Proc | None = None
        self.workers: list[Proc] = []
        self._pool: asyncpg.Pool[Any] | None = None
        self._redis: RedisClient | None = None
        self._http: aiohttp.ClientSession | None = None

    # -- lifecycle ----------------------------------------------------------
    async def __aenter__(self) -> Cluster:
        try:
            await self.start()
        except BaseException:
            await self.stop()
            raise
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    async def start(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._http = aiohttp.ClientSession(
            headers={"Authorization": f"Bearer {self.api_key}"},
            timeout=aiohttp.ClientTimeout(total=60),
        )
        # The mock takes a second to import and bind: prepare the database meanwhile.
        await asyncio.gather(
            prepare_database(self.database_url, fresh=self.config.fresh_database),
            self._start_mock(),
        )
        self._pool = await db.create_pool(self.database_url, min_size=1, max_size=4)
        self._redis = await open_redis(self.redis_url, self.redis_mode)
        await self._add_connections()
        await self._clear_redis()
        await self._start_crmsync()

    async def stop(self) -> None:
        """Stop every child (workers first, so they release their leases), then close."""
        await stop_all(self.workers, self.config.grace_seconds)
        await stop_all([p for p in (self.server, self.relay) if p], self.config.grace_seconds)
        if self.mock:
            await self.mock.stop(self.config.grace_seconds)
        if self._http:
            await self._http.close()
        if self._redis:
            await self._redis.aclose()
        if self._pool:
            await self._pool.close()
        self._http = self._redis = self._pool = None

    def kill_all_now(self) -> None:
        """SIGKILL every child at once (a second Ctrl-C)."""
        for p in [*self.workers, self.server, self.relay, self.mock]:
            if p is not None:
                p.signal(signal.SIGKILL, group=True)

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            {
                "CRMSYNC_DATABASE_URL": self.database_url,
                "CRMSYNC_REDIS_URL": self.redis_url,
                "CRMSYNC_REDIS_MODE": self.redis_mode,
                "CRMSYNC_API_KEYS": self.api_key,
                "CRMSYNC_SECRET_KEY": self.secret_key,
                "CRMSYNC_API_HOST": "127.0.0.1",
                "CRMSYNC_API_PORT": str(self.api_port),
                "CRMSYNC_LOG_LEVEL": self.config.log_level,
                "CRMSYNC_BATCH_SIZE": str(self.config.batch_size),
                "PYTHONUNBUFFERED": "1",
                # Marks every child of this run (find leftovers: grep /proc/*/environ).
                "CRMSYNC_HARNESS_RUN_DIR": str(self.run_dir.resolve()),
            }
        )
        env.update(self.config.env)
        return env

    async def _spawn(self, name: str, *args: str, env: Mapping[str, str] | None = None) -> Proc:
        nice = 0 if name == "mock-crm" else self.config.crmsync_nice
        proc = Proc(
            name, crmsync_argv(*args), {**self.env(), **(env or {})}, self.run_dir, nice=nice
        )
        await proc.start()
        return proc

    async def _start_mock(self) -> None:
        flags = f"--port {self.mock_port} --scenario {self.config.mock_scenario}".split()
        self.mock = await self._spawn("mock-crm", "mock-crm", *flags, *self.config.mock_args)
        await self._ready(self.mock, f"{self.mock_url}/_control/health")

    async def _add_connections(self) -> None:
        accounts = await mock_client.accounts(self.http, self.mock_url)
        conn = await db.connect(self.database_url)
        try:
            for a in accounts:
                await mock_client.align_clock(self.http, self.mock_url, a)
                crm_model = mock_client.crm_settings(a)
                w = a["limits"][0]
                info = ConnectionInfo(
                    id=self.config.connection_prefix + a["account"],
                    crm=a["crm"],
                    account=a["account"],
                    base_url=a["base_url"],
                    token=a["token"] or "",
                    rate_limit=format_rate(RateWindow(int(w["limit"]), int(w["window_ms"]))),
                )
                spec = connections.parse_connection(
                    id=info.id,
                    crm=info.crm,
                    account=info.account,
                    base_url=info.base_url,
                    tenant=self.config.tenant,
                    rate_limits=[] if crm_model else [info.rate_limit],
                    settings=[*crm_model, *self.config.settings],
                    **self._credentials(a),
                )
                await connections.add(conn, spec, self.keys)
                self.connections.append(info)
        finally:
            await conn.close()

    def _credentials(self, account: Mapping[str, Any]) -> dict[str, str]:
        """``parse_connection``'s credential flags for a mock account."""
        if self.config.auth == "bearer":
            return {"token": account["token"] or ""}
        app = account.get("oauth")
        if not app:
            raise ClusterError(
                f"mock account {account['account']} has no OAuth app: start the mock with --oauth"
            )
        salesforce = account["crm"] == "salesforce"
        return {
            "auth": "oauth-refresh",
            "client_id": app["client_id"],
            "client_secret": app["client_secret"],
            "refresh_token": app["refresh_token"],
            # Salesforce's token endpoint: the org's own login URL on the mock.
            "login_url": account["base_url"] if salesforce else "",
        }

    async def _clear_redis(self) -> None:
        """Forget queue, limiter, breaker and counters of our connections (earlier runs)."""
        await self.clear_redis([c.id for c in self.connections])

    async def clear_redis(self, ids: Sequence[str]) -> None:
        """Forget every Redis key of these connections (a scenario's own connections
        too: an earlier run's queue would otherwise be worked off first)."""
        assert self._redis is not None
        for cid in ids:
            pattern = keys.connection(cid).tag + ":*"
            found = [k async for k in self._redis.scan_iter(match=pattern, count=500)]
            if found:
                await self._redis.delete(*found)

    async def _start_crmsync(self) -> None:
        c = self.config
        if c.mode == "up":
            flags = f"--processes {c.processes} --concurrency {c.concurrency}".split()
            self.server = await self._spawn("up", "up", *flags, "--batch-size", str(c.batch_size))
        else:
            self.server = await self._spawn("api", "api")
            self.relay = await self._spawn("relay", "relay")
            for _ in range(c.processes):
                await self.start_worker()
        await self._ready(self.server, f"{self.api_url}/healthz")

    async def start_worker(
        self, *, processes: int = 1, env: Mapping[str, str] | None = None
    ) -> Proc:
        """One more `crmsync worker` (split mode) of ``processes`` processes, with
        ``env`` added to the children's environment (e.g. another host's clock)."""
        if self.config.mode != "split":
            raise RuntimeError("start_worker needs ClusterConfig(mode='split')")
        flags = f"--concurrency {self.config.concurrency} --batch-size {self.config.batch_size}"
        if processes > 1:
            flags += f" --processes {processes}"
        proc = await self._spawn(
            f"worker-{len(self.workers) + 1}", "worker", *flags.split(), env=env
        )
        self.workers.append(proc)
        return proc

    async def kill_worker(self, index: int = 0, sig: int = signal.SIGKILL) -> None:
        """Signal one worker process (SIGKILL: dies holding leases; SIGTERM: graceful)."""
        if not self.workers:
            raise RuntimeError("kill_worker needs ClusterConfig(mode='split') and a worker")
        proc = self.workers[index]
        proc.signal(sig, group=sig == signal.SIGKILL)
        await proc.wait(self.config.grace_seconds + 5)

    async def _ready(self, proc: Proc, url: str) -> None:
        deadline = time.monotonic() + self.config.startup_timeout
        while time.monotonic() < deadline:
            if not proc.alive:
                raise ClusterError(
                    f"{proc.name} exited with code {proc.returncode} while starting; "
                    f"see {proc.log_path}:\n{proc.tail()}"
                )
            try:
                async with self.http.get(url, timeout=aiohttp.ClientTimeout(total=2)) as r:
                    if r.status == 200:
                        return
            except (aiohttp.ClientError, TimeoutError):
                pass
            await asyncio.sleep(0.1)
        raise ClusterError(
            f"{proc.name} not ready at {url} after {self.config.startup_timeout:g}s; "
            f"see {proc.log_path}:\n{proc.tail()}"
        )

    def check_alive(self) -> None:
        """Raise if a child died on its own (a worker killed by kill_worker is expected)."""
        for p in (self.mock, self.server, self.relay):
            if p is not None and not p.alive:
                raise ClusterError(
                    f"{p.name} exited with code {p.returncode}; see {p.log_path}:\n{p.tail()}"
                )

    # -- clients --------------------------------------------------------------
    @property
    def http(self) -> aiohttp.ClientSession:
        if self._http is None:
            raise RuntimeError("the cluster is not started")
        return self._http

    @property
    def pool(self) -> asyncpg.Pool[Any]:
        if self._pool is None:
            raise RuntimeError("the cluster is not started")
        return self._pool

    @property
    def redis(self) -> RedisClient:
        if self._redis is None:
            raise RuntimeError("the cluster is not started")
        return self._redis

    # -- contacts through the HTTP API ---------------------------------------
    async def put_contacts(
        self, items: Sequence[Contact], *, chunk: int = 200, parallel: int = 4
    ) -> None:
        """Write contacts with ``POST /v1/contacts:batch`` and remember their versions."""
        sem = asyncio.Semaphore(parallel)

        async def one(part: list[Contact]) -> None:
            async with sem:
                body = {"contacts": [c.to_api() for c in part]}
                async with self.http.post(f"{self.api_url}/v1/contacts:batch", json=body) as r:
                    if r.status != 200:
                        raise ClusterError(f"POST /v1/contacts:batch: {r.status} {await r.text()}")
            self.book.put(part)

        await asyncio.gather(*(one(p) for p in chunks(items, chunk)))

    update = put_contacts

    async def delete(self, ids: Sequence[str], *, parallel: int = 16) -> None:
        """Soft-delete contacts with ``DELETE /v1/tenants/{tenant}/contacts/{id}``."""
        sem = asyncio.Semaphore(parallel)
        base = f"{self.api_url}/v1/tenants/{self.config.tenant}/contacts"

        async def one(cid: str) -> None:
            async with sem, self.http.delete(f"{base}/{cid}") as r:
                if r.status != 200:
                    raise ClusterError(f"DELETE {base}/{cid}: {r.status} {await r.text()}")
            self.book.delete([cid])

        await asyncio.gather(*(one(i) for i in ids))

    # -- progress and verification -------------------------------------------
    async def status(self) -> dict[str, Any]:
        """``crmsync status --json`` of the running system (queues, ledger, counters)."""
        return await report.collect(self.pool, self.redis)

    async def unsettled(self) -> dict[str, int]:
        """Per connection: contacts whose ledger has not reached their current version."""
        ids = [c.id for c in self.connections]
        rows = await self.pool.fetch(q("harness_unsettled"), ids)
        return {r["connection_id"]: int(r["unsettled"]) for r in rows}

    async def settled(self) -> bool:
        """Nothing in the outbox or any queue, and every ledger row final."""
        snap = await self.status()
        if "redis_error" in snap or progress.outbox_pending(snap):
            return False
        for c in snap["connections"]:
            if c["id"] in self._ids() and progress.queued(c):
                return False
        return not await self.unsettled()

    async def wait_synced(
        self,
        within: float = 120.0,
        *,
        poll: float = 0.25,
        on_poll: Callable[[], Awaitable[None]] | None = None,
    ) -> bool:
        """Wait up to ``within`` seconds until ``settled()`` twice in a row (steps over
        work in flight); False on timeout."""
        deadline = time.monotonic() + within
        streak = 0
        while time.monotonic() < deadline:
            self.check_alive()
            if on_poll is not None:
                await on_poll()
            streak = streak + 1 if await self.settled() else 0
            if streak >= 2:
                return True
            await asyncio.sleep(poll)
        return False

    def _ids(self) -> set[str]:
        return {c.id for c in self.connections}

    async def crm_records(self, connection: ConnectionInfo) -> list[dict[str, Any]]:
        return await mock_client.records(
            self.http, self.mock_url, connection.crm, connection.account
        )

    async def mock_stats(self) -> dict[str, Any]:
        """``GET /_control/stats``: per account ``"<crm>/<account>"`` and totals."""
        return await mock_client.stats(self.http, self.mock_url)

    async def set_faults(self, account: str = "*", crm: str | None = None, **spec: Any) -> None:
        """Inject faults at the mock (see crmsync_lab.mock.faults for the settings)."""
        await mock_client.faults(self.http, self.mock_url, {"account": account, "crm": crm, **spec})

    async def seed(self, contacts: list[dict[str, Any]]) -> None:
        """Load contacts into every mock account as records that existed before
        crmsync (same emails, no crmsync id); ``verify`` then knows them."""
        await mock_client.seed(self.http, self.mock_url, contacts)
        self.preexisting.update(str(c["email"]).lower() for c in contacts)

    async def verify(self) -> Report:
        """Every connection's CRM records against the rules applied to ``self.book``."""
        stats = (await self.mock_stats())["accounts"]
        checks = []
        for c in self.connections:
            records = await self.crm_records(c)
            checks.append(
                check_connection(
                    c.id,
                    c.crm,
                    c.account,
                    self.book,
                    records,
                    stats.get(f"{c.crm}/{c.account}"),
                    self.preexisting,
                )
            )
        return Report(checks)
