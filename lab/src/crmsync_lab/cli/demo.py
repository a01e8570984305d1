"""`crmsync demo`: the zero-configuration showcase (see crmsync_lab.demo)."""

from __future__ import annotations

import typer

from crmsync.cli.common import BATCH_SIZE_OPT, run
from crmsync.errors import UserError

app = typer.Typer()


@app.command()
def demo(
    contacts: int = typer.Option(
        500,
        "--contacts",
        min=1,
        max=100_000,
        envvar="CRMSYNC_DEMO_CONTACTS",
        help="Contacts to create (some later edited and deleted).",
    ),
    scenario: str = typer.Option(
        "default",
        "--scenario",
        envvar="CRMSYNC_DEMO_SCENARIO",
        help="default: 2 Salesforce + 2 HubSpot accounts; seed: all 50 (25 + 25).",
    ),
    faults: bool = typer.Option(
        False,
        "--faults",
        envvar="CRMSYNC_DEMO_FAULTS",
        help="Inject a CRM outage and a 429 storm to show the breaker and the limiter.",
    ),
    batch_size: int = BATCH_SIZE_OPT,
    processes: int = typer.Option(
        1,
        "--processes",
        "-p",
        min=1,
        max=64,
        envvar="CRMSYNC_WORKER_PROCESSES",
        help="Worker processes.",
    ),
    keep: bool = typer.Option(
        False,
        "--keep",
        envvar="CRMSYNC_DEMO_KEEP",
        help="Leave everything running after the summary, until Ctrl-C.",
    ),
    database: str = typer.Option(
        "crmsync_demo",
        "--database",
        envvar="CRMSYNC_DEMO_DATABASE",
        help="Database the demo drops and recreates on the CRMSYNC_DATABASE_URL server.",
    ),
    timeout: float = typer.Option(
        180.0,
        "--timeout",
        min=1,
        envvar="CRMSYNC_DEMO_TIMEOUT",
        help="Seconds to wait for every CRM to reach its final state.",
    ),
) -> None:
    """Showcase: mock CRMs, API, relay and workers; contacts in; live progress; checked summary."""
    from crmsync_lab.demo import DemoOptions, run_demo
    from crmsync_lab.harness.database import scratch_database

    if scenario not in ("default", "seed"):
        raise UserError(f"--scenario {scenario!r} must be default or seed")
    scratch_database(database)
    options = DemoOptions(
        contacts=contacts,
        scenario="seed" if scenario == "seed" else "default",
        faults=faults,
        batch_size=batch_size,
        processes=processes,
        keep=keep,
        database=database,
        timeout=timeout,
    )
    raise typer.Exit(run(run_demo(options)))
