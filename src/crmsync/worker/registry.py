"""The connections a worker serves: loaded from PostgreSQL, mirrored into Redis.

PostgreSQL is the source of truth for connections (the CLI and API write only
there); every worker process refreshes its view on ``crmsync_connections``
notifications (and every few seconds as a fallback), pushes limits, breaker
settings and pause state into the connection's Redis state, and keeps one CRM
adapter per connection on the process's shared HTTP session: every id in
``connections`` has its adapter in ``adapters`` whenever the loop looks. Each
adapter sends with its connection's token source (``crm/tokens.py``), kept while
the credentials stay the same: a refresh token rotated by a worker only updates
the source's copy. Settings stored before a rule refused them still load, with a
warning naming each problem.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

import aiohttp
import asyncpg
import structlog

from crmsync import connection_settings, connections, db, vault
from crmsync.connections import Connection
from crmsync.crm import make_adapter, tokens
from crmsync.crm.base import CrmAdapter
from crmsync.crm.credentials import TokenSource
from crmsync.queue.store import QueueStore
from crmsync.settings import Settings

log = structlog.get_logger(__name__)


class Registry:
    def __init__(
        self,
        pool: asyncpg.Pool[Any],
        store: QueueStore,
        session: aiohttp.ClientSession,
        settings: Settings,
    ) -> None:
        self.pool = pool
        self.store = store
        self.session = session
        self.settings = settings
        self.connections: dict[str, Connection] = {}
        self.adapters: dict[str, CrmAdapter] = {}
        self.tokens: dict[str, TokenSource] = {}
        self.keys = vault.keyring(settings.secret_key)  # credentials open in memory only

    async def refresh(self) -> set[str]:
        """Reload connections; returns the ids that are new, changed or resumed."""
        rows = await self.pool.fetch(db.q("worker_connections"))
        fresh = {r["id"]: Connection.from_row(r, self.keys) for r in rows}
        touched: set[str] = set()
        for cid, conn in fresh.items():
            old = self.connections.get(cid)
            if old == conn:
                continue
            touched.add(cid)
            await self.store.configure(
                cid,
                conn.windows,
                breaker_threshold=self.settings.breaker_threshold,
                breaker_recovery_ms=int(self.settings.breaker_recovery_seconds * 1000),
                paused=conn.paused_reason,
                crm=conn.crm_spec,
            )
            if conn.paused_reason and (old is None or old.paused_reason != conn.paused_reason):
                await self.store.pause(cid, conn.paused_reason)
            elif not conn.paused_reason and old is not None and old.paused_reason:
                await self.store.resume(cid)
            if old is None or old.settings != conn.settings:
                for problem in connection_settings.problems(conn.crm, conn.settings):
                    log.warning("connections.setting_problem", connection=cid, problem=problem)
            new_source = old is None or _source_key(old) != _source_key(conn)
            if new_source:
                self.tokens[cid] = self._token_source(conn)
            elif isinstance(source := self.tokens.get(cid), tokens.SharedToken):
                source.secrets = dict(conn.secrets)  # a refresh token a worker rotated
            changed = old is not None and (old.settings, old.crm) != (conn.settings, conn.crm)
            if new_source or changed:
                self.adapters[cid] = make_adapter(
                    conn.crm,
                    base_url=conn.base_url,
                    token=self.tokens[cid],
                    settings=self._adapter_settings(conn),
                    session=self.session,
                )
        for cid in set(self.connections) - set(fresh):
            self.adapters.pop(cid, None)
            self.tokens.pop(cid, None)
        self.connections = fresh
        return touched

    def _adapter_settings(self, conn: Connection) -> dict[str, Any]:
        # The global timeout unless the connection sets its own; the bounds on
        # what a CRM sends back are the operator's alone.
        return {
            "timeout_seconds": self.settings.http_timeout_seconds,
            **conn.settings,
            "max_block_seconds": self.settings.max_block_seconds,
            "max_body_bytes": self.settings.max_body_bytes,
        }

    def _token_source(self, conn: Connection) -> TokenSource:
        rev = conn.auth.rev

        async def rotated(refresh_token: str) -> None:
            await connections.store_rotated(self.pool, conn.id, self.keys, rev, refresh_token)

        timeout = tokens.timeout_of(self._adapter_settings(conn))
        return tokens.for_connection(
            conn,
            redis=self.store.redis,
            keyring=self.keys,
            session=self.session,
            timeout_s=timeout,
            on_rotated=rotated,
        )

    async def watch(
        self,
        stop: asyncio.Event,
        on_change: Callable[[set[str]], None],
        poll_seconds: float = 2.0,
    ) -> None:
        """Refresh on NOTIFY crmsync_connections, and every ``poll_seconds``."""
        changed = asyncio.Event()

        def _notified(*_: object) -> None:
            changed.set()

        listener: asyncpg.Connection[Any] | None = None
        try:
            listener = await db.connect(self.settings.database_url)
            await listener.add_listener("crmsync_connections", _notified)
        except Exception as exc:  # polling still works without LISTEN
            log.warning("connections.listen_failed", error=str(exc))
        try:
            while not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(changed.wait(), timeout=poll_seconds)
                changed.clear()
                try:
                    touched = await self.refresh()
                except (
                    OSError,
                    asyncpg.PostgresError,
                    asyncpg.InterfaceError,
                    vault.SecretsError,  # e.g. rotated under this process: keep what it has
                ) as exc:
                    log.warning("connections.refresh_failed", error=str(exc))
                    continue
                if touched:
                    on_change(touched)
        finally:
            if listener is not None:
                with contextlib.suppress(Exception):
                    await listener.close()


def _source_key(conn: Connection) -> tuple[Any, ...]:
    """What a token source is built from (not the refresh token a worker rotates)."""
    return (conn.crm, conn.base_url, conn.credentials, tokens.max_age(conn.settings))
