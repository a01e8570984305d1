"""The ``crmsync`` command line: thin, parses flags and calls the modules.

Each command module owns a typer app of its own and imports only
``crmsync.cli.common``; this module puts them together, so nothing imports
back up the tree. Commands of other distributions (the lab's demo, bench and
mock-crm) come in through the ``crmsync.cli`` entry-point group.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from importlib.metadata import EntryPoint, entry_points

import typer

from crmsync.cli import api, connections, contacts, dlq, relay, run, status
from crmsync.cli.common import DB_OPT, err, settings_from
from crmsync.cli.common import run as run_async
from crmsync.errors import UserError

app = typer.Typer(
    name="crmsync",
    help="Keep PostgreSQL contacts in sync with Salesforce and HubSpot, within every rate limit.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


@app.command()
def migrate(database_url: str | None = DB_OPT) -> None:
    """Create the database if needed and apply pending migrations."""
    from crmsync import db

    s = settings_from(database_url=database_url)

    async def go() -> list[str]:
        await db.ensure_database(s.database_url)
        conn = await db.connect(s.database_url)
        try:
            return await db.migrate(conn)
        finally:
            await conn.close()

    applied = run_async(go())
    typer.echo(
        f"applied {len(applied)} migration(s)" + (": " + ", ".join(applied) if applied else "")
    )


for _module in (api, relay, run, status):
    app.add_typer(_module.app)
app.add_typer(connections.app, name="connections")
app.add_typer(contacts.app, name="contacts")
app.add_typer(dlq.app, name="dlq")


EXTENSIONS = "crmsync.cli"


def add_extensions(root: typer.Typer, found: Iterable[EntryPoint] | None = None) -> list[str]:
    """Let each entry point of the ``crmsync.cli`` group add its commands to ``root``
    (the lab adds demo, bench and mock-crm); the names of those that did.

    The product never imports what installs itself here: without the lab its
    commands are simply absent. One that fails to load is named on stderr and
    skipped, so a broken extension never takes the product's commands with it.
    """
    added = []
    for entry in entry_points(group=EXTENSIONS) if found is None else found:
        try:
            entry.load()(root)
        except Exception as exc:
            err.print(
                f"[yellow]warning:[/yellow] the {EXTENSIONS} extension {entry.name!r} "
                f"({entry.value}) failed to load, its commands are missing: {exc}"
            )
            continue
        added.append(entry.name)
    return added


add_extensions(app)


def main() -> None:
    try:
        app()
    except UserError as exc:
        err.print(f"[red]error:[/red] {exc}")
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)
