"""`crmsync relay` and `crmsync reconcile`: getting changes into the Redis queues."""

from __future__ import annotations

import asyncio

import typer
from rich.console import Console
from rich.table import Table

from crmsync.cli.common import DB_OPT, REDIS_MODE_OPT, REDIS_OPT, run, settings_from

app = typer.Typer()


@app.command()
def relay(
    batch: int | None = typer.Option(
        None, "--batch", min=1, envvar="CRMSYNC_RELAY_BATCH", help="Outbox rows per transaction."
    ),
    poll_seconds: float | None = typer.Option(
        None,
        "--poll-seconds",
        min=0.01,
        envvar="CRMSYNC_RELAY_POLL_SECONDS",
        help="Look at the outbox this often even without a notification.",
    ),
    database_url: str | None = DB_OPT,
    redis_url: str | None = REDIS_OPT,
    redis_mode: str | None = REDIS_MODE_OPT,
) -> None:
    """Move captured changes from the outbox to the Redis queues (run one or several)."""
    from crmsync.capture.relay import run_relay
    from crmsync.logs import configure_logging
    from crmsync.processes import install_stop

    s = settings_from(
        database_url=database_url,
        redis_url=redis_url,
        redis_mode=redis_mode,
        relay_batch=batch,
        relay_poll_seconds=poll_seconds,
    )
    configure_logging(s.log_level, s.log_json)

    async def main() -> None:
        stop = asyncio.Event()
        install_stop(stop)
        await run_relay(s, stop=stop)

    run(main())


@app.command()
def reconcile(
    connection: str | None = typer.Option(
        None, "--connection", envvar="CRMSYNC_RECONCILE_CONNECTION", help="Only this connection."
    ),
    database_url: str | None = DB_OPT,
    redis_url: str | None = REDIS_OPT,
    redis_mode: str | None = REDIS_MODE_OPT,
) -> None:
    """Queue again every contact whose synced version differs (after Redis lost data)."""
    from crmsync import db
    from crmsync.capture.reconcile import reconcile as run_reconcile
    from crmsync.queue.store import QueueStore
    from crmsync.redis_client import redis_of

    s = settings_from(database_url=database_url, redis_url=redis_url, redis_mode=redis_mode)

    async def go() -> dict[str, int]:
        pool = await db.create_pool(s.database_url, min_size=1, max_size=2)
        try:
            redis = await redis_of(s)
            try:
                return await run_reconcile(pool, QueueStore(redis), connection_id=connection)
            finally:
                await redis.aclose()
        finally:
            await pool.close()

    counts = run(go())
    t = Table(title=f"reconcile: {sum(counts.values())} contact(s) queued")
    t.add_column("connection")
    t.add_column("queued", justify="right")
    for cid, n in counts.items():
        t.add_row(cid, str(n))
    Console().print(t)
