"""`crmsync bench`: the benchmark scenarios, with the raw-HTTP ceiling in the same run."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import orjson
import typer
from rich.console import Console

from crmsync.cli.common import DB_OPT, REDIS_MODE_OPT, REDIS_OPT, run, settings_from

app = typer.Typer()


@app.command()
def bench(
    scenario: str = typer.Option(
        "single",
        "--scenario",
        "-s",
        envvar="CRMSYNC_BENCH_SCENARIO",
        help="raw | single | seed | seed-load | batch | fair | many | daily | all.",
    ),
    duration: float | None = typer.Option(
        None,
        "--duration",
        min=1.0,
        envvar="CRMSYNC_BENCH_DURATION",
        help="Measured seconds (default: raw 10, single 20, seed 60, others 20).",
    ),
    warmup: float = typer.Option(
        5.0, "--warmup", min=0.0, envvar="CRMSYNC_BENCH_WARMUP", help="Seconds before measuring."
    ),
    as_json: bool = typer.Option(
        False, "--json", envvar="CRMSYNC_BENCH_JSON", help="Print JSON instead of tables."
    ),
    plot: Path | None = typer.Option(
        None, "--plot", envvar="CRMSYNC_BENCH_PLOT", help="Write PNG charts into this directory."
    ),
    profile: Path | None = typer.Option(
        None,
        "--profile",
        envvar="CRMSYNC_BENCH_PROFILE",
        help="py-spy every worker during the window; stacks and a summary go here.",
    ),
    processes: int | None = typer.Option(
        None,
        "--processes",
        min=1,
        envvar="CRMSYNC_BENCH_PROCESSES",
        help="Worker processes (default: the scenario's: single 1, seed 2).",
    ),
    concurrency: int = typer.Option(
        200,
        "--concurrency",
        min=1,
        envvar="CRMSYNC_BENCH_CONCURRENCY",
        help="Requests in flight per worker process, and in the raw loop.",
    ),
    latency_ms: float | None = typer.Option(
        None, "--latency-ms", min=0.0, envvar="CRMSYNC_BENCH_LATENCY_MS", help="Mock latency."
    ),
    backlog: int | None = typer.Option(
        None, "--backlog", min=1, envvar="CRMSYNC_BENCH_BACKLOG", help="fair: the big backlog."
    ),
    database: str = typer.Option(
        "crmsync_bench",
        "--database",
        envvar="CRMSYNC_BENCH_DATABASE",
        help="Database the bench drops and recreates (on the server of --database-url).",
    ),
    run_dir: Path | None = typer.Option(
        None, "--run-dir", envvar="CRMSYNC_BENCH_RUN_DIR", help="Where process logs go."
    ),
    cluster_url: str | None = typer.Option(
        None,
        "--cluster-url",
        envvar="CRMSYNC_BENCH_CLUSTER_URL",
        help="A Redis Cluster node: seed, seed-load and batch run on it too, after the "
        "run on --redis-url, with the ratio cluster/standalone (`make cluster` prints one).",
    ),
    database_url: str | None = DB_OPT,
    redis_url: str | None = REDIS_OPT,
    redis_mode: str | None = REDIS_MODE_OPT,
) -> None:
    """Benchmark against mock CRMs, with the raw-HTTP ceiling in the same run."""
    from crmsync_lab.bench import suite
    from crmsync_lab.bench.plot import plot as draw
    from crmsync_lab.bench.report import ScenarioResult, render, to_json
    from crmsync_lab.bench.sampler import machine_info
    from crmsync_lab.bench.stage import BenchConfig
    from crmsync_lab.harness.cluster import database_named
    from crmsync_lab.harness.database import scratch_database

    s = settings_from(database_url=database_url, redis_url=redis_url, redis_mode=redis_mode)
    names = suite.resolve(scenario)
    scratch_database(database)
    err = Console(stderr=True)
    cfg = BenchConfig(
        database_url=database_named(s.database_url, database),
        redis_url=s.redis_url,
        redis_mode=s.redis_mode,
        cluster_url=cluster_url,
        duration=duration or 0.0,
        warmup=warmup,
        processes=processes,
        concurrency=concurrency,
        latency_ms=latency_ms,
        run_dir=run_dir,
        plot_dir=plot,
        profile_dir=profile,
        backlog=backlog,
        say=lambda msg: err.print(f"[dim]bench:[/dim] {msg}"),
    )
    machine = machine_info()

    async def main() -> list[ScenarioResult]:
        # SIGTERM like Ctrl-C: cancel, so the harness stops every child it started.
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, task.cancel)
        try:
            return await suite.run(names, cfg)
        finally:
            loop.remove_signal_handler(signal.SIGTERM)

    try:
        results = run(main())
    except asyncio.CancelledError:
        raise typer.Exit(143) from None
    if plot is not None:
        for r in results:
            for path in draw(r, plot):
                cfg.say(f"wrote {path}")
    if as_json:
        typer.echo(orjson.dumps(to_json(results, machine), option=orjson.OPT_INDENT_2).decode())
        return
    out = Console()
    out.print(
        f"machine: {machine['nproc']} CPU ({machine['cpu_model']}), {machine['ram_gib']} GiB, "
        f"load {machine['load_avg_1m']}"
    )
    for r in results:
        render(r, out)
