"""`crmsync dlq list/replay/purge`: the dead letters, filtered by connection and error."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, TypeVar

import orjson
import typer
from rich.console import Console
from rich.table import Table

from crmsync.cli.common import DB_OPT, REDIS_MODE_OPT, REDIS_OPT, settings_from, with_pool
from crmsync.errors import UserError

if TYPE_CHECKING:
    from crmsync.dlq import DeadFilter

app = typer.Typer(help="Dead letters: list, replay, purge.", no_args_is_help=True)


T = TypeVar("T")

CONN_OPT = typer.Option(
    None, "--connection", envvar="CRMSYNC_DLQ_CONNECTION", help="Only this connection."
)
ERROR_OPT = typer.Option(
    None,
    "--error",
    envvar="CRMSYNC_DLQ_ERROR",
    help="Only letters whose error or error code contains this text (case-insensitive).",
)
ID_OPT = typer.Option(
    None, "--id", envvar="CRMSYNC_DLQ_ID", help="Only this dead-letter id (repeatable)."
)
ALL_OPT = typer.Option(
    False, "--all", envvar="CRMSYNC_DLQ_ALL", help="Allow acting on every dead letter."
)
ERROR_WIDTH = 60


RESOLVED_OPT = typer.Option(
    False,
    "--resolved",
    envvar="CRMSYNC_DLQ_RESOLVED",
    help="The resolved letters instead (history: a later version of the contact synced).",
)


def _filter(
    connection: str | None, error: str | None, ids: list[int] | None, which: str = "open"
) -> DeadFilter:
    from crmsync.dlq import DeadFilter

    return DeadFilter(
        connection=connection,
        error=error,
        ids=tuple(ids) if ids else None,
        which="resolved" if which == "resolved" else "all" if which == "all" else "open",
    )


@app.command("list")
def list_(
    connection: str | None = CONN_OPT,
    error: str | None = ERROR_OPT,
    ids: list[int] | None = ID_OPT,
    limit: int = typer.Option(
        100, "--limit", min=1, envvar="CRMSYNC_DLQ_LIMIT", help="Show at most N (oldest first)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON (with payloads)."),
    resolved: bool = RESOLVED_OPT,
    all_: bool = typer.Option(
        False, "--all", envvar="CRMSYNC_DLQ_ALL", help="Open and resolved letters."
    ),
    database_url: str | None = DB_OPT,
) -> None:
    """List the open dead letters with the CRM's error (resolved ones: --resolved, --all)."""
    from crmsync.dlq import list_dead

    f = _filter(connection, error, ids, "all" if all_ else "resolved" if resolved else "open")
    rows, total = with_pool(
        settings_from(database_url=database_url), lambda pool, _: list_dead(pool, f, limit=limit)
    )
    if as_json:
        out = {"total": total, "dead_letters": rows}
        typer.echo(orjson.dumps(out, option=orjson.OPT_INDENT_2).decode())
        return
    kind = {"open": "", "resolved": "resolved ", "all": "open and resolved "}[f.which]
    t = Table(title=f"{len(rows)} of {total} {kind}dead letter(s)")
    cols = (
        "id",
        "connection",
        "contact",
        "operation",
        "error_code",
        "error",
        "attempts",
        "created_at",
    )
    for col in cols:
        t.add_column(col, justify="right" if col in ("id", "attempts") else "left")
    for r in rows:
        err = r["error"] if len(r["error"]) <= ERROR_WIDTH else r["error"][: ERROR_WIDTH - 1] + "…"
        t.add_row(
            str(r["id"]),
            r["connection_id"],
            r["contact_id"],
            r["operation"],
            r["error_code"] or "",
            err,
            str(r["attempts"]),
            r["created_at"].isoformat(timespec="seconds"),
        )
    Console().print(t)


@app.command("replay")
def replay(
    connection: str | None = CONN_OPT,
    error: str | None = ERROR_OPT,
    ids: list[int] | None = ID_OPT,
    all_: bool = ALL_OPT,
    database_url: str | None = DB_OPT,
    redis_url: str | None = REDIS_OPT,
    redis_mode: str | None = REDIS_MODE_OPT,
) -> None:
    """Queue the matching contacts again with a fresh attempt budget."""
    from crmsync import dlq

    f = _filter(connection, error, ids)
    n = with_pool(
        settings_from(database_url=database_url, redis_url=redis_url, redis_mode=redis_mode),
        lambda pool, store: dlq.replay(pool, store, f, all_=all_),
        redis=True,
    )
    typer.echo(f"replayed {n} dead letter(s): queued again for the workers")


@app.command("purge")
def purge(
    connection: str | None = CONN_OPT,
    error: str | None = ERROR_OPT,
    ids: list[int] | None = ID_OPT,
    all_: bool = ALL_OPT,
    yes: bool = typer.Option(
        False, "--yes", "-y", envvar="CRMSYNC_DLQ_YES", help="Do not ask for confirmation."
    ),
    resolved: bool = RESOLVED_OPT,
    database_url: str | None = DB_OPT,
) -> None:
    """Delete the matching dead letters for good (the resolved history: --resolved)."""
    from crmsync import dlq

    f = _filter(connection, error, ids, "resolved" if resolved else "open")
    if not yes:
        if not sys.stdin.isatty():
            raise UserError("purge deletes dead letters for good: add --yes to confirm")
        typer.confirm("Delete the matching dead letters for good?", abort=True)
    n = with_pool(
        settings_from(database_url=database_url), lambda pool, _: dlq.purge(pool, f, all_=all_)
    )
    typer.echo(f"purged {n} dead letter(s)")
