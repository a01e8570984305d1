"""`crmsync worker` and `crmsync up`: the processes that do the syncing."""

from __future__ import annotations

import asyncio
import contextlib
from multiprocessing.context import SpawnProcess

import structlog
import typer

from crmsync.cli.common import BATCH_SIZE_OPT, DB_OPT, REDIS_MODE_OPT, REDIS_OPT, run, settings_from
from crmsync.settings import Settings

app = typer.Typer()


@app.command()
def worker(
    processes: int = typer.Option(
        1, "--processes", "-p", min=1, envvar="CRMSYNC_WORKER_PROCESSES", help="Worker processes."
    ),
    concurrency: int = typer.Option(
        200,
        "--concurrency",
        "-c",
        min=1,
        envvar="CRMSYNC_WORKER_CONCURRENCY",
        help="CRM requests in flight per process.",
    ),
    batch_size: int = BATCH_SIZE_OPT,
    database_url: str | None = DB_OPT,
    redis_url: str | None = REDIS_OPT,
    redis_mode: str | None = REDIS_MODE_OPT,
) -> None:
    """Sync queued contacts to the CRMs (stateless: run as many as you like)."""
    from crmsync.logs import configure_logging
    from crmsync.processes import install_stop, run_worker, run_worker_processes

    s = settings_from(
        database_url=database_url,
        redis_url=redis_url,
        redis_mode=redis_mode,
        batch_size=batch_size,
        worker_processes=processes,
        worker_concurrency=concurrency,
    )
    configure_logging(s.log_level, s.log_json)
    if processes > 1:
        raise typer.Exit(run_worker_processes(s, processes, concurrency))

    async def main() -> None:
        stop = asyncio.Event()
        install_stop(stop)
        await run_worker(s, concurrency, stop, own_process=True)

    run(main())


@app.command()
def up(
    processes: int = typer.Option(1, "--processes", "-p", min=1, envvar="CRMSYNC_WORKER_PROCESSES"),
    concurrency: int = typer.Option(
        200, "--concurrency", "-c", min=1, envvar="CRMSYNC_WORKER_CONCURRENCY"
    ),
    batch_size: int = BATCH_SIZE_OPT,
    host: str | None = typer.Option(None, "--host", envvar="CRMSYNC_API_HOST"),
    port: int | None = typer.Option(None, "--port", envvar="CRMSYNC_API_PORT"),
    database_url: str | None = DB_OPT,
    redis_url: str | None = REDIS_OPT,
    redis_mode: str | None = REDIS_MODE_OPT,
) -> None:
    """API + relay + workers in one command (single-node production).

    The API and the relay share this process; each worker is a child process."""
    from crmsync.logs import configure_logging

    s = settings_from(
        database_url=database_url,
        redis_url=redis_url,
        redis_mode=redis_mode,
        batch_size=batch_size,
        api_host=host,
        api_port=port,
        worker_processes=processes,
        worker_concurrency=concurrency,
    )
    configure_logging(s.log_level, s.log_json)
    run(_up(s, processes, concurrency))


async def _up(s: Settings, processes: int, concurrency: int) -> None:
    from crmsync import db
    from crmsync.api.app import serve
    from crmsync.capture.relay import run_relay
    from crmsync.processes import install_stop, spawn_workers, stop_workers

    await db.ensure_database(s.database_url)
    conn = await db.connect(s.database_url)
    try:
        await db.migrate(conn)
    finally:
        await conn.close()
    stop = asyncio.Event()
    install_stop(stop)
    # Workers run in their own processes: a burst of API or relay work in this
    # event loop must never delay a send the rate limiter has just admitted.
    children = spawn_workers(s, processes, concurrency)
    api_task = asyncio.create_task(serve(s, handle_signals=False))
    tasks = [
        api_task,
        asyncio.create_task(run_relay(s, stop=stop)),
        asyncio.create_task(_supervise(children, s, concurrency, stop)),
    ]
    stop_task = asyncio.create_task(stop.wait())
    await asyncio.wait([*tasks, stop_task], return_when=asyncio.FIRST_COMPLETED)
    stop.set()
    stop_workers(children)
    api_task.cancel()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    loop = asyncio.get_running_loop()
    for c in children:
        await loop.run_in_executor(None, c.join)
    for r in results:
        if isinstance(r, Exception):
            raise r


async def _supervise(
    children: list[SpawnProcess], s: Settings, concurrency: int, stop: asyncio.Event
) -> None:
    """Replace a worker process that died (crash, OOM kill): its leases expire
    and its work returns to the queues, so a new worker is all that is needed."""
    from crmsync.processes import spawn_workers

    log = structlog.get_logger(__name__)
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=1.0)
        for i, child in enumerate(children):
            if not stop.is_set() and not child.is_alive():
                log.warning("up.worker_replaced", pid=child.pid, exitcode=child.exitcode)
                children[i] = spawn_workers(s, 1, concurrency)[0]
