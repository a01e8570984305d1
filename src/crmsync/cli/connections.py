"""`crmsync connections add/list/update/test/setup/remove/pause/resume`: CRM accounts."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
import typer
from rich.console import Console
from rich.table import Table

from crmsync.cli.common import DB_OPT, REDIS_MODE_OPT, REDIS_OPT, settings_from, with_pool
from crmsync.errors import UserError

if TYPE_CHECKING:
    from crmsync.connections import Connection
    from crmsync.crm.onboarding import Check
    from crmsync.queue.store import QueueStore
    from crmsync.settings import Settings
    from crmsync.vault import Keyring

app = typer.Typer(help="Manage CRM connections (one per CRM account).", no_args_is_help=True)

# The flags `add` and `update` share; `update` leaves what is not given as it is.
CRM_OPT = typer.Option(..., "--crm", envvar="CRMSYNC_CONN_CRM", help="salesforce or hubspot.")
ACCOUNT_HELP = "CRM account (org / portal) name."
BASE_URL_HELP = (
    "CRM REST base URL (Salesforce OAuth: default the --login-url; the token answer's "
    "instance_url is used for API calls)."
)
AUTH_OPT_HELP = (
    "bearer (--token), oauth-refresh (--client-id --client-secret --refresh-token) or jwt "
    "(Salesforce: --client-id --username --private-key --login-url)."
)
TOKEN_OPT = typer.Option(
    None, "--token", envvar="CRMSYNC_CONN_TOKEN", help="Bearer token (never printed in full)."
)
CLIENT_ID_OPT = typer.Option(
    None, "--client-id", envvar="CRMSYNC_CONN_CLIENT_ID", help="OAuth client id (consumer key)."
)
CLIENT_SECRET_OPT = typer.Option(
    None, "--client-secret", envvar="CRMSYNC_CONN_CLIENT_SECRET", help="OAuth client secret."
)
REFRESH_TOKEN_OPT = typer.Option(
    None, "--refresh-token", envvar="CRMSYNC_CONN_REFRESH_TOKEN", help="OAuth refresh token."
)
USERNAME_OPT = typer.Option(
    None, "--username", envvar="CRMSYNC_CONN_USERNAME", help="jwt: the Salesforce user."
)
PRIVATE_KEY_OPT = typer.Option(
    None,
    "--private-key",
    envvar="CRMSYNC_CONN_PRIVATE_KEY",
    help="jwt: PEM file of the connected app's RSA private key.",
)
LOGIN_URL_OPT = typer.Option(
    None,
    "--login-url",
    envvar="CRMSYNC_CONN_LOGIN_URL",
    help="Salesforce OAuth: login URL, token endpoint at + /services/oauth2/token "
    "(default https://login.salesforce.com).",
)
RATE_LIMIT_OPT = typer.Option(
    [],
    "--rate-limit",
    envvar="CRMSYNC_CONN_RATE_LIMIT",
    help="LIMIT/WINDOW, repeatable for several windows (100/s, 1000/10s, 100000/day): "
    "sliding windows (limit_model=windows). Default: the CRM's own limit model "
    "(limit_model=crm; tier, time_zone, daily_limit, concurrency in --settings; docs/LIMITS.md).",
)
SETTINGS_OPT = typer.Option(
    [],
    "--settings",
    envvar="CRMSYNC_CONN_SETTINGS",
    help="Setting KEY=VALUE, repeatable: batch_size, max_in_flight, timeout_seconds, "
    "api_version, external_id_field, id_property, field_map (JSON), token_max_age_seconds.",
)
NO_CHECK_OPT = typer.Option(
    False,
    "--no-check",
    envvar="CRMSYNC_CONN_NO_CHECK",
    help="Store it without checking it against the CRM first (`connections test`).",
)


def _pem(path: Path | None) -> str | None:
    if path is None:
        return None
    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"--private-key {path}: cannot read it ({exc})") from None


@app.command("add")
def add(
    connection_id: str = typer.Argument(..., help="Connection id, e.g. acme-sf."),
    crm: str = CRM_OPT,
    account: str = typer.Option(..., "--account", envvar="CRMSYNC_CONN_ACCOUNT", help=ACCOUNT_HELP),
    base_url: str | None = typer.Option(
        None, "--base-url", envvar="CRMSYNC_CONN_BASE_URL", help=BASE_URL_HELP
    ),
    auth: str = typer.Option("bearer", "--auth", envvar="CRMSYNC_CONN_AUTH", help=AUTH_OPT_HELP),
    token: str | None = TOKEN_OPT,
    client_id: str | None = CLIENT_ID_OPT,
    client_secret: str | None = CLIENT_SECRET_OPT,
    refresh_token: str | None = REFRESH_TOKEN_OPT,
    username: str | None = USERNAME_OPT,
    private_key: Path | None = PRIVATE_KEY_OPT,
    login_url: str | None = LOGIN_URL_OPT,
    tenant: str = typer.Option(
        "default", "--tenant", envvar="CRMSYNC_CONN_TENANT", help="Tenant whose contacts sync here."
    ),
    rate_limit: list[str] = RATE_LIMIT_OPT,
    settings: list[str] = SETTINGS_OPT,
    no_check: bool = NO_CHECK_OPT,
    database_url: str | None = DB_OPT,
    redis_url: str | None = REDIS_OPT,
    redis_mode: str | None = REDIS_MODE_OPT,
) -> None:
    """Add a CRM connection (one CRM account) after checking it against the CRM;
    its credentials are stored encrypted under CRMSYNC_SECRET_KEY."""
    from crmsync import connections, vault

    spec = connections.parse_connection(
        id=connection_id,
        crm=crm,
        account=account,
        base_url=base_url,
        auth=auth,
        token=token or "",
        client_id=client_id or "",
        client_secret=client_secret or "",
        refresh_token=refresh_token or "",
        username=username or "",
        private_key=_pem(private_key) or "",
        login_url=login_url or "",
        tenant=tenant,
        rate_limits=rate_limit,
        settings=settings,
    )
    s = settings_from(database_url=database_url, redis_url=redis_url, redis_mode=redis_mode)
    keys = vault.keyring(s.secret_key)  # before anything is written

    async def go(pool: Any, store: QueueStore | None) -> Connection:
        checked = spec
        if store is not None:
            if await connections.exists(pool, spec.id):
                raise UserError(f"connection {spec.id!r} already exists")
            try:
                checked = await _checked(s, spec, keys, store, what="added")
            except UserError:
                await store.drop(spec.id)  # nothing of it stays in Redis either
                raise
        await connections.add(pool, checked, keys)
        return checked

    added = with_pool(s, go, redis=not no_check)
    typer.echo(
        f"added connection {added.id} ({added.crm}, tenant {added.tenant}, "
        f"limits {connections.describe_limits(added)}, {_credentials(added)})"
    )


def _credentials(conn: Connection) -> str:
    """The credentials as users may see them: kind and the hint of one secret."""
    if conn.auth.kind == "oauth-refresh":
        return f"auth oauth-refresh, client {conn.auth.client_id}, refresh token {conn.token_hint}"
    if conn.auth.kind == "jwt":
        return f"auth jwt, client {conn.auth.client_id}, user {conn.auth.username}"
    return f"token {conn.token_hint}"


@app.command("update")
def update(
    connection_id: str = typer.Argument(..., help="Connection id."),
    account: str | None = typer.Option(
        None, "--account", envvar="CRMSYNC_CONN_ACCOUNT", help=ACCOUNT_HELP
    ),
    base_url: str | None = typer.Option(
        None, "--base-url", envvar="CRMSYNC_CONN_BASE_URL", help=BASE_URL_HELP
    ),
    auth: str | None = typer.Option(
        None, "--auth", envvar="CRMSYNC_CONN_AUTH", help="Another kind: " + AUTH_OPT_HELP
    ),
    token: str | None = TOKEN_OPT,
    client_id: str | None = CLIENT_ID_OPT,
    client_secret: str | None = CLIENT_SECRET_OPT,
    refresh_token: str | None = REFRESH_TOKEN_OPT,
    username: str | None = USERNAME_OPT,
    private_key: Path | None = PRIVATE_KEY_OPT,
    login_url: str | None = LOGIN_URL_OPT,
    rate_limit: list[str] = typer.Option(
        [],
        "--rate-limit",
        envvar="CRMSYNC_CONN_RATE_LIMIT",
        help="LIMIT/WINDOW, repeatable: replaces every window of the connection.",
    ),
    settings: list[str] = typer.Option(
        [],
        "--settings",
        envvar="CRMSYNC_CONN_SETTINGS",
        help="Setting KEY=VALUE, repeatable: set over the stored ones.",
    ),
    unset: list[str] = typer.Option(
        [], "--unset", envvar="CRMSYNC_CONN_UNSET", help="Setting KEY to remove, repeatable."
    ),
    no_check: bool = NO_CHECK_OPT,
    database_url: str | None = DB_OPT,
    redis_url: str | None = REDIS_OPT,
    redis_mode: str | None = REDIS_MODE_OPT,
) -> None:
    """Change a connection's credentials (auth kind too), limits or settings, keeping
    its sync ledger and dead letters; workers pick it up without a restart. New
    credentials resume a connection paused because its old ones were refused."""
    from crmsync import connection_settings, connections, vault
    from crmsync.cli.common import err

    changes = connections.Changes(
        account=account,
        base_url=base_url,
        auth=auth,
        token=token,
        client_id=client_id,
        client_secret=client_secret,
        refresh_token=refresh_token,
        username=username,
        private_key=_pem(private_key),
        login_url=login_url,
        rate_limits=rate_limit,
        settings=settings,
        unset=unset,
    )
    s = settings_from(database_url=database_url, redis_url=redis_url, redis_mode=redis_mode)
    keys = vault.keyring(s.secret_key)

    async def go(pool: Any, store: QueueStore | None) -> tuple[Connection, Connection]:
        async with pool.acquire() as pg, pg.transaction():
            cur = await connections.load(pg, connection_id, keys, lock=True)
            new = connections.apply(cur, changes)
            for problem in connection_settings.problems(cur.crm, new.settings):
                err.print(f"[yellow]warning:[/yellow] {problem} (stored before; --unset it)")
            if store is not None:
                new = await _checked(s, new, keys, store, what="updated")
            await connections.store(pg, new, keys, resume=changes.credentials)
            return cur, new

    cur, new = with_pool(s, go, redis=not no_check)
    typer.echo(f"updated connection {new.id}: " + _changes(cur, new, changes.credentials))


def _changes(cur: Connection, new: Connection, credentials: bool) -> str:
    from crmsync import connections
    from crmsync.crm.auth import is_auth_pause

    parts = []
    if new.credentials != cur.credentials or new.secrets != cur.secrets:
        parts.append(_credentials(new))
    if new.windows != cur.windows:
        parts.append(f"limits {connections.describe_limits(new)}")
    if dict(new.settings) != dict(cur.settings):
        parts.append(f"settings {orjson.dumps(dict(new.settings)).decode()}")
    if (new.account, new.base_url) != (cur.account, cur.base_url):
        parts.append(f"account {new.account} at {new.base_url}")
    if credentials and is_auth_pause(cur.paused_reason):
        parts.append("resumed (it was paused for its credentials)")
    return ", ".join(parts) or "nothing changed"


async def _checked(
    s: Settings, conn: Connection, keys: Keyring, store: QueueStore, *, what: str
) -> Connection:
    """The connection after its checks passed (with a refresh token the CRM rotated
    meanwhile); UserError when one failed. Prints one line per check."""
    from dataclasses import replace

    checks, rotated = await _run_checks(s, conn, keys, store, setup=False)
    for c in checks:
        typer.echo(c.line())
    failed = [c for c in checks if not c.ok]
    if failed:
        raise UserError(
            f"connection {conn.id!r} not {what}: {len(failed)} check(s) failed (above); "
            "fix them, or store it anyway with --no-check"
        )
    if rotated:
        conn = replace(conn, secrets={**conn.secrets, "refresh_token": rotated[-1]})
    return conn


async def _run_checks(
    s: Settings, conn: Connection, keys: Keyring, store: QueueStore, *, setup: bool
) -> tuple[list[Check], list[str]]:
    """Run onboarding on the workers' limiter and shared token (the wiring of
    ``crm.onboarding``); (the checks, refresh tokens the CRM rotated)."""
    from crmsync.clock import RedisClock
    from crmsync.crm import hubspot, salesforce, tokens
    from crmsync.crm.http import Headers, JsonClient, http_session
    from crmsync.crm.onboarding import Check, NoAnswer, Onboarding
    from crmsync.queue.keys import connection as keys_of
    from crmsync.worker.permits import Permits

    rotated: list[str] = []

    async def keep(refresh_token: str) -> None:
        rotated.append(refresh_token)

    settings = {"timeout_seconds": s.http_timeout_seconds, **conn.settings}
    if not await store.redis.hexists(keys_of(conn.id).state, "limits"):
        # A connection no worker configured yet (being added): its limiter is
        # configured here; otherwise the workers' configuration stands.
        await store.configure(
            conn.id,
            conn.windows,
            breaker_threshold=s.breaker_threshold,
            breaker_recovery_ms=int(s.breaker_recovery_seconds * 1000),
            paused=conn.paused_reason,
            crm=conn.crm_spec,
        )
    permits = Permits(
        store,
        RedisClock(),
        margin=s.limit_margin,
        http_timeout_seconds=s.http_timeout_seconds,
    )

    async def take_permit() -> None:
        if conn.windows and await permits.take_one(conn.id) is None:
            detail = f"no request permit within {s.http_timeout_seconds:g}s"
            fix = "the workers use the whole limit now: try again later"
            raise NoAnswer(Check("rate limit", False, detail, fix))

    async def heard(headers: Headers) -> None:
        # The CRM model's budget learnt from the checks' answers too (a Salesforce
        # budget not learnt yet admits one request until an answer tells it).
        read = salesforce.usage_of if conn.crm == "salesforce" else hubspot.usage_of
        usage = read(headers) if conn.crm_spec is not None else None
        if usage is not None:
            await store.learn(conn.id, usage)

    async with http_session(4, s.http_timeout_seconds) as session:
        source = tokens.for_connection(
            conn,
            redis=store.redis,
            keyring=keys,
            session=session,
            timeout_s=tokens.timeout_of(settings),
            on_rotated=keep,
        )
        client = JsonClient(
            token=source, settings=settings, session=session, base_url=conn.base_url
        )
        onboarding = Onboarding(conn, client, take_permit, heard)
        checks = await (onboarding.setup() if setup else onboarding.check())
    return checks, rotated


def _onboard(
    connection_id: str,
    database_url: str | None,
    redis_url: str | None,
    redis_mode: str | None,
    *,
    setup: bool,
) -> None:
    from crmsync import connections, vault

    s = settings_from(database_url=database_url, redis_url=redis_url, redis_mode=redis_mode)
    keys = vault.keyring(s.secret_key)

    async def go(pool: Any, store: QueueStore | None) -> list[Check]:
        assert store is not None
        conn = await connections.load(pool, connection_id, keys)
        checks, rotated = await _run_checks(s, conn, keys, store, setup=setup)
        if rotated:
            await connections.store_rotated(pool, conn.id, keys, conn.auth.rev, rotated[-1])
        return checks

    checks = with_pool(s, go, redis=True)
    for c in checks:
        typer.echo(c.line())
    failed = sum(not c.ok for c in checks)
    if failed:
        typer.echo(f"{connection_id}: {failed} of {len(checks)} check(s) failed")
        raise typer.Exit(1)
    typer.echo(f"{connection_id}: ready to sync")


@app.command("test")
def test(
    connection_id: str = typer.Argument(..., help="Connection id."),
    database_url: str | None = DB_OPT,
    redis_url: str | None = REDIS_OPT,
    redis_mode: str | None = REDIS_MODE_OPT,
) -> None:
    """Check a connection against its CRM: it authenticates, the external id field
    or property is there and unique, the mapped fields are writable; daily usage.
    One line per check, with the fix of each that fails; exit code 1 if any does."""
    _onboard(connection_id, database_url, redis_url, redis_mode, setup=False)


@app.command("setup")
def setup(
    connection_id: str = typer.Argument(..., help="Connection id."),
    database_url: str | None = DB_OPT,
    redis_url: str | None = REDIS_OPT,
    redis_mode: str | None = REDIS_MODE_OPT,
) -> None:
    """Create what the CRM side needs where its API allows (HubSpot's crmsync_id and
    crmsync_status properties) and print the admin's exact steps for the rest
    (Salesforce's external id field)."""
    _onboard(connection_id, database_url, redis_url, redis_mode, setup=True)


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
    cols = ("id", "tenant", "crm", "account", "base_url", "limits", "paused", "auth", "token")
    for col in cols:
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
            r["auth"],
            r["token"],
        )
    Console().print(t)


@app.command("remove")
def remove(
    connection_id: str = typer.Argument(..., help="Connection id."),
    yes: bool = typer.Option(
        False, "--yes", "-y", envvar="CRMSYNC_CONN_YES", help="Do not ask for confirmation."
    ),
    database_url: str | None = DB_OPT,
) -> None:
    """Remove a connection with its sync ledger and dead letters (asks first)."""
    from crmsync import connections

    if not yes:
        if not sys.stdin.isatty():
            raise UserError(
                f"remove deletes connection {connection_id!r} with its sync ledger and dead "
                "letters for good (added again, every contact is sent again): add --yes to confirm"
            )
        typer.confirm(
            f"Delete connection {connection_id} with its sync ledger and dead letters for good?",
            abort=True,
        )
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
    redis_mode: str | None = REDIS_MODE_OPT,
) -> None:
    """Resume sending to a connection: paused, or held back by a CRM's 429 or
    quota headers (the wait and the slow-down end for every worker at once)."""
    from crmsync import connections

    async def go(pg: Any, store: Any) -> None:
        await connections.resume(pg, connection_id)
        await store.resume(connection_id)

    with_pool(
        settings_from(database_url=database_url, redis_url=redis_url, redis_mode=redis_mode),
        go,
        redis=True,
    )
    typer.echo(f"resumed connection {connection_id}")
