"""`crmsync keys create/list/revoke`: API keys with a role and a tenant."""

from __future__ import annotations

import orjson
import typer
from rich.console import Console
from rich.table import Table

from crmsync.cli.common import DB_OPT, settings_from, with_pool
from crmsync.errors import UserError

app = typer.Typer(
    help="API keys: admin (every tenant), or writer/reader of one tenant.", no_args_is_help=True
)


@app.command("create")
def create(
    tenant: str | None = typer.Option(
        None,
        "--tenant",
        envvar="CRMSYNC_KEY_TENANT",
        help="The tenant a writer/reader key acts on.",
    ),
    role: str | None = typer.Option(
        None, "--role", envvar="CRMSYNC_KEY_ROLE", help="writer (read and write) or reader."
    ),
    admin: bool = typer.Option(
        False,
        "--admin",
        envvar="CRMSYNC_KEY_ADMIN",
        help="A key for every tenant that also manages connections and keys.",
    ),
    name: str | None = typer.Option(
        None, "--name", envvar="CRMSYNC_KEY_NAME", help="A label shown by `keys list`."
    ),
    database_url: str | None = DB_OPT,
) -> None:
    """Create a key; it is printed once, alone on the last line (only its hash is kept)."""
    from crmsync import apikeys

    if admin and role not in (None, "admin"):
        raise UserError(f"--admin and --role {role} contradict each other: give one")
    if not admin and role is None:
        raise UserError("give --tenant T --role writer|reader, or --admin")
    wanted = "admin" if admin else str(role)
    row, key = with_pool(
        settings_from(database_url=database_url),
        lambda pg, _: apikeys.create(pg, role=wanted, tenant=tenant, name=name),
    )
    scope = "every tenant" if row["tenant"] is None else f"tenant {row['tenant']}"
    typer.echo(f"created {row['role']} key {row['id']} for {scope}; it is shown once, here:")
    typer.echo(key)


@app.command("list")
def list_(
    tenant: str | None = typer.Option(
        None, "--tenant", envvar="CRMSYNC_KEY_TENANT", help="Only this tenant's keys."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    database_url: str | None = DB_OPT,
) -> None:
    """List keys (never a secret: they are not stored)."""
    from crmsync import apikeys

    rows = with_pool(
        settings_from(database_url=database_url),
        lambda pg, _: apikeys.list_keys(pg, tenant=tenant),
    )
    if as_json:
        typer.echo(orjson.dumps(rows, option=orjson.OPT_INDENT_2).decode())
        return
    t = Table(title=f"{len(rows)} API key(s)")
    for col in ("id", "role", "tenant", "name", "created", "last used", "revoked"):
        t.add_column(col, no_wrap=col == "id")
    for r in rows:
        t.add_row(
            r["id"],
            r["role"],
            r["tenant"] or "(every tenant)",
            r["name"] or "",
            _when(r["created_at"]),
            _when(r["last_used_at"]),
            _when(r["revoked_at"]),
        )
    Console().print(t)


@app.command("revoke")
def revoke(
    key_id: str = typer.Argument(..., help="The key's id (see `crmsync keys list`)."),
    database_url: str | None = DB_OPT,
) -> None:
    """Revoke a key for good; running APIs refuse it within CRMSYNC_API_KEY_CACHE_SECONDS."""
    from crmsync import apikeys

    with_pool(settings_from(database_url=database_url), lambda pg, _: apikeys.revoke(pg, key_id))
    typer.echo(f"revoked key {key_id}")


def _when(iso: str | None) -> str:
    return "" if iso is None else iso[:19].replace("T", " ")
