"""The ``crmsync`` command line: thin, parses flags and calls the modules."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import typer
from rich.console import Console

from crmsync.errors import UserError
from crmsync.settings import Settings

T = TypeVar("T")

app = typer.Typer(
    name="crmsync",
    help="Keep PostgreSQL contacts in sync with Salesforce and HubSpot, within every rate limit.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
connections_app = typer.Typer(
    help="Manage CRM connections (one per CRM account).", no_args_is_help=True
)
contacts_app = typer.Typer(help="Bulk contact operations.", no_args_is_help=True)
dlq_app = typer.Typer(help="Dead letters: list, replay, purge.", no_args_is_help=True)
app.add_typer(connections_app, name="connections")
app.add_typer(contacts_app, name="contacts")
app.add_typer(dlq_app, name="dlq")

err = Console(stderr=True)

DB_OPT = typer.Option(None, "--database-url", envvar="CRMSYNC_DATABASE_URL", help="PostgreSQL DSN.")
REDIS_OPT = typer.Option(None, "--redis-url", envvar="CRMSYNC_REDIS_URL", help="Redis URL.")
BATCH_SIZE_OPT = typer.Option(
    1,
    "--batch-size",
    min=1,
    max=200,
    envvar="CRMSYNC_BATCH_SIZE",
    help="Records per CRM request (1 = single-record mode).",
)


def _settings(**overrides: Any) -> Settings:
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


def _run(coro: Coroutine[Any, Any, T]) -> T:
    try:
        import uvloop

        return uvloop.run(coro)
    except ImportError:  # pragma: no cover - non-Linux
        return asyncio.run(coro)


def main() -> None:
    try:
        app()
    except UserError as exc:
        err.print(f"[red]error:[/red] {exc}")
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)


@app.command()
def migrate(database_url: str | None = DB_OPT) -> None:
    """Create the database if needed and apply pending migrations."""
    from crmsync import db

    s = _settings(database_url=database_url)

    async def go() -> list[str]:
        await db.ensure_database(s.database_url)
        conn = await db.connect(s.database_url)
        try:
            return await db.migrate(conn)
        finally:
            await conn.close()

    applied = _run(go())
    typer.echo(
        f"applied {len(applied)} migration(s)" + (": " + ", ".join(applied) if applied else "")
    )


# The commands below are wired to their modules; see docs/INTERNALS.md.


def _register_commands() -> None:
    """Import every ``crmsync.commands`` module so it registers its commands."""
    import importlib
    import pkgutil

    import crmsync.commands as pkg

    for info in pkgutil.iter_modules(pkg.__path__):
        importlib.import_module(f"{pkg.__name__}.{info.name}")


_register_commands()

__all__ = ["Path", "app", "connections_app", "contacts_app", "dlq_app", "main"]
