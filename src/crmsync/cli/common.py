"""What every ``crmsync`` command shares: settings from flags, the event loop, options."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import asyncpg
import typer
from rich.console import Console

from crmsync.errors import UserError
from crmsync.settings import Settings

T = TypeVar("T")

err = Console(stderr=True)

DB_OPT = typer.Option(None, "--database-url", envvar="CRMSYNC_DATABASE_URL", help="PostgreSQL DSN.")
REDIS_OPT = typer.Option(None, "--redis-url", envvar="CRMSYNC_REDIS_URL", help="Redis URL.")
REDIS_MODE_OPT = typer.Option(
    None,
    "--redis-mode",
    envvar="CRMSYNC_REDIS_MODE",
    help="standalone (one Redis server) or cluster (--redis-url names one seed node).",
)
BATCH_SIZE_OPT = typer.Option(
    1,
    "--batch-size",
    min=1,
    max=200,
    envvar="CRMSYNC_BATCH_SIZE",
    help="Records per CRM request (1 = single-record mode).",
)


def settings_from(**overrides: Any) -> Settings:
    """The settings of the environment with the flags given on the command line."""
    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})
    except Exception as exc:  # pydantic ValidationError: name the setting
        raise UserError(
            f"invalid setting: {exc}".splitlines()[0] + " " + _first_error(exc)
        ) from exc


def _first_error(exc: Exception) -> str:
    errors = getattr(exc, "errors", None)
    if callable(errors):
        e = errors()[0]
        field = ".".join(str(x) for x in e.get("loc", ()))
        return f"(CRMSYNC_{field.upper()}: {e.get('msg')})"
    return ""


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run a command's coroutine on uvloop (asyncio where uvloop is missing)."""
    try:
        import uvloop

        return uvloop.run(coro)
    except ImportError:  # pragma: no cover - non-Linux
        return asyncio.run(coro)


def with_pool(
    s: Settings,
    fn: Callable[[asyncpg.Pool[Any], Any], Awaitable[T]],
    *,
    redis: bool = False,
) -> T:
    """Run ``fn(pool, store)`` with a small PostgreSQL pool and, when ``redis``,
    a ``QueueStore`` on a fresh Redis client (None otherwise)."""
    from crmsync import db

    async def go() -> T:
        pool = await db.create_pool(s.database_url, min_size=1, max_size=2)
        try:
            if not redis:
                return await fn(pool, None)
            from crmsync.queue.store import QueueStore
            from crmsync.redis_client import redis_of

            client = await redis_of(s)
            try:
                return await fn(pool, QueueStore(client, margin=s.limit_margin))
            finally:
                await client.aclose()
        finally:
            await pool.close()

    return run(go())
