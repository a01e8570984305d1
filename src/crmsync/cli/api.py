"""`crmsync api`: the HTTP API alone (scale it out behind a load balancer)."""

from __future__ import annotations

import typer

from crmsync.cli.common import DB_OPT, run, settings_from

app = typer.Typer()


@app.command("api")
def api(
    host: str | None = typer.Option(
        None, "--host", envvar="CRMSYNC_API_HOST", help="Listen address."
    ),
    port: int | None = typer.Option(None, "--port", envvar="CRMSYNC_API_PORT", help="Listen port."),
    database_url: str | None = DB_OPT,
) -> None:
    """Serve the HTTP API (bearer keys from CRMSYNC_API_KEYS)."""
    from crmsync.api.app import serve

    # serve() warns when CRMSYNC_API_KEYS is empty (every /v1 route then answers 401).
    run(serve(settings_from(api_host=host, api_port=port, database_url=database_url)))
