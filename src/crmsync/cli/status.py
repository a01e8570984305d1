"""`crmsync status`: queues, rates, breakers, paused connections, dead letters."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
import typer
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.text import Text

from crmsync.cli.common import DB_OPT, REDIS_MODE_OPT, REDIS_OPT, run, settings_from
from crmsync.errors import UserError

app = typer.Typer()


@app.command()
def status(
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    watch: bool = typer.Option(
        False,
        "--watch",
        "-w",
        envvar="CRMSYNC_STATUS_WATCH",
        help="Redraw every SECONDS (default 2) until Ctrl-C: `status --watch 5`.",
    ),
    seconds: float | None = typer.Argument(
        None, metavar="SECONDS", min=0.5, help="With --watch: seconds between redraws."
    ),
    database_url: str | None = DB_OPT,
    redis_url: str | None = REDIS_OPT,
    redis_mode: str | None = REDIS_MODE_OPT,
) -> None:
    """Show queues, breakers, limits, paused connections and dead letters."""
    from crmsync import db
    from crmsync.redis_client import redis_of
    from crmsync.report import collect
    from crmsync.status_view import render

    if seconds is not None and not watch:
        raise UserError(
            f"SECONDS ({seconds:g}) goes with --watch: `crmsync status --watch {seconds:g}`"
        )
    every = seconds or 2.0
    s = settings_from(database_url=database_url, redis_url=redis_url, redis_mode=redis_mode)
    console = Console()

    async def go() -> dict[str, Any] | None:
        pool = await db.create_pool(s.database_url, min_size=1, max_size=2)
        redis = await redis_of(s)
        try:
            report = await collect(pool, redis)
            if not watch:
                return report
            with Live(render(report, console.width), console=console, auto_refresh=False) as live:
                while True:
                    await asyncio.sleep(every)
                    report = await collect(pool, redis)
                    stamp = time.strftime("%H:%M:%S")
                    live.update(_titled(render(report, console.width), stamp), refresh=True)
        finally:
            await redis.aclose()
            await pool.close()

    try:
        report = run(go())
    except KeyboardInterrupt:
        return
    assert report is not None
    if as_json:
        typer.echo(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode())
        return
    console.print(render(report, console.width))


def _titled(body: RenderableType, stamp: str) -> RenderableType:
    return Group(Text(f"crmsync status at {stamp} (Ctrl-C to stop)", style="dim"), body)
