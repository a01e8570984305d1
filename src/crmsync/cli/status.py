"""`crmsync status`: queues, rates, breakers, paused connections, dead letters."""

from __future__ import annotations

import orjson
import typer
from rich.console import Console
from rich.table import Table

from crmsync.cli.common import DB_OPT, REDIS_OPT, run, settings_from

app = typer.Typer()


@app.command()
def status(
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    database_url: str | None = DB_OPT,
    redis_url: str | None = REDIS_OPT,
) -> None:
    """Show queues, breakers, limits, paused connections and dead letters."""
    from crmsync import db
    from crmsync.redis_client import open_redis
    from crmsync.report import collect

    s = settings_from(database_url=database_url, redis_url=redis_url)

    async def go() -> dict[str, object]:
        pool = await db.create_pool(s.database_url, min_size=1, max_size=2)
        redis = await open_redis(s.redis_url)
        try:
            return await collect(pool, redis)
        finally:
            await redis.aclose()
            await pool.close()

    report = run(go())
    if as_json:
        typer.echo(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode())
        return
    t = Table(title="crmsync status")
    for col in (
        "connection",
        "crm",
        "state",
        "ready",
        "leased",
        "delayed",
        "synced",
        "skipped",
        "deleted",
        "retrying",
        "dead",
        "429s",
        "p50 ms",
        "p99 ms",
    ):
        t.add_column(col, justify="left" if col in ("connection", "crm", "state") else "right")
    conns = report["connections"]
    assert isinstance(conns, list)
    for c in conns:
        state = "paused: " + c["paused_reason"] if c["paused"] else str(c.get("breaker", "?"))
        if c.get("blocked_for_s"):
            state += f" (blocked {c['blocked_for_s']}s)"
        q = c.get("queue", {})
        sync, cnt = c["sync"], c.get("counters", {})
        lat = c.get("latency_ms", {})
        t.add_row(
            c["id"],
            c["crm"],
            state,
            *(str(q.get(k, "?")) for k in ("ready", "leased", "delayed")),
            *(str(sync.get(k, 0)) for k in ("synced", "skipped", "deleted", "retrying")),
            str(c["dead_letters"]),
            str(cnt.get("crm_rate_limited", 0)),
            _ms(lat.get("p50")),
            _ms(lat.get("p99")),
        )
    console = Console()
    console.print(t)
    totals = report["totals"]
    assert isinstance(totals, dict)
    console.print(
        f"contacts: {totals['contacts']}  outbox pending: {totals['outbox']}  "
        f"dead letters: {totals['dead_letters']}"
    )
    if "redis_error" in report:
        console.print(f"[yellow]Redis unreachable: {report['redis_error']}[/yellow]")


def _ms(v: float | None) -> str:
    return "-" if v is None else f"≤{v:g}"
