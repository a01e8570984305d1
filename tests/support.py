"""What integration and acceptance tests share besides fixtures (those are in
conftest.py): connection rows, an in-process API client, one-call database and HTTP
helpers, the types of the fixture factories, a MONITOR log."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

import aiohttp
import asyncpg
import httpx
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from fastapi import FastAPI

from crmsync import connections, db, vault
from crmsync.connections import Connection
from crmsync.ratelimit import RateWindow
from crmsync.settings import Settings
from crmsync_lab.harness.processes import Proc
from crmsync_lab.mock.config import AccountSpec
from crmsync_lab.mock.server import MockHandle

# Nothing listens there: for connections a test must never send to.
UNREACHABLE = "http://127.0.0.1:1"


def connection(
    id: str,
    crm: str,
    *,
    tenant: str = "default",
    account: str | None = None,
    base_url: str = UNREACHABLE,
    token: str = "t",
    per_second: int | None = None,
    settings: Mapping[str, Any] | None = None,
) -> Connection:
    """A connection (account: its id) with one window of ``per_second`` if given."""
    windows = (RateWindow(per_second, 1000),) if per_second else ()
    return Connection(id, tenant, crm, account or id, base_url, token, windows, settings or {})


def to_mock(
    mock: MockHandle,
    id: str,
    crm: str,
    account: str,
    *,
    per_second: int | None = None,
    settings: Mapping[str, Any] | None = None,
) -> Connection:
    """A connection to a mock CRM account (its base URL and token)."""
    return connection(
        id,
        crm,
        account=account,
        base_url=mock.base_url(crm, account),
        token=mock.token(crm, account),
        per_second=per_second,
        settings=settings,
    )


async def add_connections(
    pg: db.Executor, specs: Iterable[Connection], keys: vault.Keyring | None = None
) -> None:
    """Add them as ``crmsync connections add`` does (each one notified), their tokens
    sealed under ``keys`` (default: the test run's CRMSYNC_SECRET_KEY, conftest.py)."""
    ring = keys or vault.keyring(Settings().secret_key)
    for spec in specs:
        await connections.add(pg, spec, ring)


def fetch_now(database_url: str, sql: str, *args: Any) -> list[asyncpg.Record]:
    """``sql``'s rows, from a test that runs outside an event loop (a CLI test)."""

    async def go() -> list[asyncpg.Record]:
        conn = await asyncpg.connect(database_url)
        try:
            return await conn.fetch(sql, *args)
        finally:
            await conn.close()

    return asyncio.run(go())


async def call_json(
    http: aiohttp.ClientSession, method: str, url: str, token: str | None, body: Any = None
) -> tuple[int, Any, Any]:
    """(status, JSON body or None, headers) of one request, bearer ``token`` if any."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with http.request(method, url, json=body, headers=headers) as r:
        raw = await r.read()
        return r.status, (json.loads(raw) if raw else None), r.headers


def rsa_key_pair(*, traditional: bool = False) -> tuple[str, str]:
    """(private key PEM, public key PEM) of a new RSA key, as a JWT connection's
    key file and its connected app's certificate hold them; ``traditional``: the
    private key as ``BEGIN RSA PRIVATE KEY`` (OpenSSL's default), else PKCS#8."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    fmt = (
        serialization.PrivateFormat.TraditionalOpenSSL
        if traditional
        else serialization.PrivateFormat.PKCS8
    )
    private = key.private_bytes(serialization.Encoding.PEM, fmt, serialization.NoEncryption())
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private.decode(), public.decode()


def asgi_client(app: FastAPI) -> httpx.AsyncClient:
    """A client of ``app`` in this process (ASGI, no socket), at ``http://api``."""
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api")


class OpenApi(Protocol):
    """The ``api_client`` fixture: the HTTP API on the test's database and Redis, in
    this process; keyword arguments change its settings (``api_keys="k"``,
    ``metrics_public=True``...). Closed after the test."""

    async def __call__(self, **settings: Any) -> httpx.AsyncClient: ...


class StartMock(Protocol):
    """The ``start_mock_crm`` fixture: mock CRMs in this process, closed after the test."""

    async def __call__(
        self,
        *accounts: AccountSpec,
        latency_ms: float = 0.0,
        jitter_ms: float = 0.0,
        seed: int | None = None,
    ) -> MockHandle: ...


class StartCrmsync(Protocol):
    """The ``crmsync_process`` fixture: ``crmsync <args>`` as a child process on the
    test's database and Redis, stopped (SIGTERM, then SIGKILL) after the test."""

    async def __call__(self, *args: str, env: Mapping[str, str] | None = None) -> Proc: ...


class RedisMonitor:
    """Every command Redis runs on the test's database, as MONITOR reports them
    (dicts with ``command``, ``client_type``, ``db``...), in order."""

    def __init__(self) -> None:
        self.commands: list[dict[str, Any]] = []
        self._more = asyncio.Event()

    def add(self, command: dict[str, Any]) -> None:
        self.commands.append(command)
        self._more.set()

    def count(self, text: str) -> int:
        """Commands seen so far whose text holds ``text``."""
        return sum(text in c["command"] for c in self.commands)

    async def wait_for(self, check: Callable[[], bool], within: float = 5.0) -> None:
        """Until ``check()`` holds (MONITOR reports a moment after Redis ran a command)."""
        async with asyncio.timeout(within):
            while not check():
                self._more.clear()
                await self._more.wait()


def script_keys(command: str) -> list[str] | None:
    """The KEYS of an EVALSHA or EVAL command line as MONITOR prints it (None: other)."""
    parts = command.split(" ")
    if parts[0].upper().strip('"') not in ("EVALSHA", "EVAL"):
        return None
    n = int(parts[2].strip('"'))
    return [k.strip('"') for k in parts[3 : 3 + n]]
