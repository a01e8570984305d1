"""`crmsync connections add/list/remove/pause/resume`: CRM accounts in PostgreSQL."""

from __future__ import annotations

from typing import Any

import orjson
import typer
from rich.console import Console
from rich.table import Table

from crmsync.cli.common import DB_OPT, REDIS_OPT, settings_from, with_pool

app = typer.Typer(help="Manage CRM connections (one per CRM account).", no_args_is_help=True)


@app.command("add")
def add(
    connection_id: str = typer.Argument(..., help="Connection id, e.g. acme-sf."),
    crm: str = typer.Option(..., "--crm", envvar="CRMSYNC_CONN_CRM", help="salesforce or hubspot."),
    account: str = typer.Option(
        ..., "--account", envvar="CRMSYNC_CONN_ACCOUNT", help="CRM account (org / portal) name."
    ),
    base_url: str = typer.Option(
        ..., "--base-url", envvar="CRMSYNC_CONN_BASE_URL", help="CRM REST base URL."
    ),
    token: str = typer.Option(
        ..., "--token", envvar="CRMSYNC_CONN_TOKEN", help="Bearer token (never printed in full)."
    ),
    tenant: str = typer.Option(
        "default", "--tenant", envvar="CRMSYNC_CONN_TENANT", help="Tenant whose contacts sync here."
    ),
    rate_limit: list[str] = typer.Option(
        [],
        "--rate-limit",
        envvar="CRMSYNC_CONN_RATE_LIMIT",
        help="LIMIT/WINDOW, repeatable for several windows (100/s, 1000/10s, 100000/day). "
        "Default: salesforce 100/s, hubspot 100/10s.",
    ),
    settings: list[str] = typer.Option(
        [],
        "--settings",
        envvar="CRMSYNC_CONN_SETTINGS",
        help="Adapter setting KEY=VALUE, repeatable (api_version=v60.0, external_id_field=...).",
    ),
    database_url: str | None = DB_OPT,
) -> None:
    """Add a CRM connection (one CRM account); its token is stored encrypted
    under CRMSYNC_SECRET_KEY."""
    from crmsync import connections, redact, vault

    spec = connections.parse_connection(
        id=connection_id,
        crm=crm,
        account=account,
        base_url=base_url,
        token=token,
        tenant=tenant,
        rate_limits=rate_limit,
        settings=settings,
    )
    s = settings_from(database_url=database_url)
    keys = vault.keyring(s.secret_key)  # before anything is written
    with_pool(s, lambda pg, _: connections.add(pg, spec, keys))
    typer.echo(
        f"added connection {spec.id} ({spec.crm}, tenant {spec.tenant}, "
        f"limits {connections.format_rate_limits(spec.rate_limits)}, "
        f"token {redact.mask(spec.token)})"
    )


@app.command("list")
def list_(
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    database_url: str | None = DB_OPT,
) -> None:
    """List connections (a token shows its last 4 characters at most)."""
    from crmsync import connections

    rows = with_pool(
        settings_from(database_url=database_url), lambda pg, _: connections.list_all(pg)
    )
    if as_json:
        typer.echo(orjson.dumps(rows, option=orjson.OPT_INDENT_2).decode())
        return
    t = Table(title=f"{len(rows)} connection(s)")
    for col in ("id", "tenant", "crm", "account", "base_url", "limits", "paused", "token"):
        t.add_column(col, no_wrap=col in ("id", "token"))
    for r in rows:
        t.add_row(
            r["id"],
            r["tenant"],
            r["crm"],
            r["account"],
            r["base_url"],
            connections.format_rate_limits(r["rate_limits"]),
            r["paused_reason"] or "",
            r["token"],
        )
    Console().print(t)


@app.command("remove")
def remove(
    connection_id: str = typer.Argument(..., help="Connection id."),
    database_url: str | None = DB_OPT,
) -> None:
    """Remove a connection with its sync ledger and dead letters."""
    from crmsync import connections

    with_pool(
        settings_from(database_url=database_url),
        lambda pg, _: connections.remove(pg, connection_id),
    )
    typer.echo(f"removed connection {connection_id}")


@app.command("pause")
def pause(
    connection_id: str = typer.Argument(..., help="Connection id."),
    reason: str = typer.Option(
        "paused by operator",
        "--reason",
        envvar="CRMSYNC_PAUSE_REASON",
        help="Why (shown in status).",
    ),
    database_url: str | None = DB_OPT,
) -> None:
    """Stop sending to a connection; changes keep queueing until it is resumed."""
    from crmsync import connections

    with_pool(
        settings_from(database_url=database_url),
        lambda pg, _: connections.pause(pg, connection_id, reason),
    )
    typer.echo(f"paused connection {connection_id}: {reason}")


@app.command("resume")
def resume(
    connection_id: str = typer.Argument(..., help="Connection id."),
    database_url: str | None = DB_OPT,
    redis_url: str | None = REDIS_OPT,
) -> None:
    """Resume sending to a connection: paused, or held back by a CRM's 429 or
    quota headers (the wait and the slow-down end for every worker at once)."""
    from crmsync import connections

    async def go(pg: Any, store: Any) -> None:
        await connections.resume(pg, connection_id)
        await store.resume(connection_id)

    with_pool(settings_from(database_url=database_url, redis_url=redis_url), go, redis=True)
    typer.echo(f"resumed connection {connection_id}")
