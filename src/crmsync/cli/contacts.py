"""`crmsync contacts import FILE.csv`: bulk load through COPY."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import orjson
import typer
from rich.console import Console
from rich.table import Table

from crmsync.cli.common import DB_OPT, run, settings_from

if TYPE_CHECKING:
    from crmsync.capture.csv_import import ImportResult

app = typer.Typer(help="Bulk contact operations.", no_args_is_help=True)


SHOWN_REJECTIONS = 50


@app.command("import")
def import_(
    file: Path = typer.Argument(..., help="CSV with header id,email[,first_name,last_name,...]."),
    tenant: str = typer.Option(
        "default",
        "--tenant",
        envvar="CRMSYNC_IMPORT_TENANT",
        help="The tenant whose contacts the file holds; rows naming another tenant are refused.",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
    database_url: str | None = DB_OPT,
) -> None:
    """Import contacts from CSV (columns id,email,first_name,last_name,company,status[,tenant]).

    Every row is a contact of --tenant; a row whose tenant column names another
    tenant is a bad row. Bad rows are reported as "line N: field: reason" and
    skipped; good rows are kept. When an id repeats, its last line wins. Exit
    code 1 only when rows were read and none was accepted.
    """
    from crmsync import db
    from crmsync.capture.csv_import import import_csv

    s = settings_from(database_url=database_url)

    async def go() -> ImportResult:
        conn = await db.connect(s.database_url)
        try:
            return await import_csv(conn, file, tenant=tenant)
        finally:
            await conn.close()

    result = run(go())
    if as_json:
        typer.echo(orjson.dumps(result.as_dict(), option=orjson.OPT_INDENT_2).decode())
    else:
        _print(file, result)
    if result.rows and not result.accepted:
        raise typer.Exit(1)


def _print(file: Path, result: ImportResult) -> None:
    console = Console()
    if result.rejected:
        t = Table(title=f"rejected rows ({result.rejected_rows})")
        for col in ("line", "field", "reason"):
            t.add_column(col, justify="right" if col == "line" else "left")
        for r in result.rejected[:SHOWN_REJECTIONS]:
            t.add_row(str(r.line), r.field, r.reason)
        console.print(t)
        if len(result.rejected) > SHOWN_REJECTIONS:
            console.print(f"… and {len(result.rejected) - SHOWN_REJECTIONS} more (see --json)")
    console.print(
        f"{file}: {result.rows} row(s) read, {result.accepted} accepted "
        f"({result.inserted} new, {result.updated} updated, {result.unchanged} unchanged, "
        f"{result.superseded} superseded by a later line), {result.rejected_rows} rejected"
    )
