"""`crmsync secrets generate-key/rotate`: the key CRM credentials are encrypted with."""

from __future__ import annotations

import typer

from crmsync.cli.common import DB_OPT, run, settings_from
from crmsync.errors import UserError

app = typer.Typer(
    help="The key (CRMSYNC_SECRET_KEY) that encrypts CRM credentials in PostgreSQL.",
    no_args_is_help=True,
)


@app.command("generate-key")
def generate_key() -> None:
    """Print a new random key (base64 of 32 bytes) for CRMSYNC_SECRET_KEY."""
    from crmsync import vault

    typer.echo(vault.new_key())


@app.command("rotate")
def rotate(
    new_key: str | None = typer.Option(
        None,
        "--new-key",
        envvar="CRMSYNC_NEW_SECRET_KEY",
        help="The key to encrypt under from now on (base64 of 32 bytes).",
    ),
    generate: bool = typer.Option(
        False, "--generate", help="Make a new key and print it alone on the last line."
    ),
    database_url: str | None = DB_OPT,
) -> None:
    """Re-encrypt every connection's credentials under a new key, in one transaction.

    Opens them with CRMSYNC_SECRET_KEY (every key it lists). Afterwards set
    CRMSYNC_SECRET_KEY to the new key and restart every crmsync process; until
    then, running workers keep the credentials they hold. Zero-downtime order:
    first run every process with CRMSYNC_SECRET_KEY=NEW,OLD, then rotate, then
    drop OLD.
    """
    from crmsync import connections, db, vault

    if generate == (new_key is not None):
        raise UserError("give --new-key KEY or --generate (one of them)")
    target = new_key if new_key is not None else vault.new_key()
    new = vault.keyring(target)
    s = settings_from(database_url=database_url)
    # The new key opens too: running rotate again after it succeeded is harmless.
    old = vault.keyring(",".join(k for k in (s.secret_key, target) if k))

    async def go() -> int:
        conn = await db.connect(s.database_url)
        try:
            return await connections.rotate_secrets(conn, old, new)
        finally:
            await conn.close()

    n = run(go())
    typer.echo(
        f"re-encrypted the credentials of {n} connection(s) under key id {new.current_id}; "
        "set CRMSYNC_SECRET_KEY to the new key and restart every crmsync process"
    )
    if generate:
        typer.echo(target)
