"""`crmsync mock-crm`: serve mock Salesforce and HubSpot accounts over HTTP."""

from __future__ import annotations

import asyncio
import signal
import sys
from dataclasses import replace

import orjson
import typer

from crmsync.cli.common import run
from crmsync.errors import UserError

app = typer.Typer()


@app.command("mock-crm")
def mock_crm(
    host: str = typer.Option("127.0.0.1", "--host", envvar="CRMSYNC_MOCK_HOST"),
    port: int = typer.Option(9000, "--port", envvar="CRMSYNC_MOCK_PORT", help="0 = any free port."),
    scenario: str = typer.Option(
        "seed",
        "--scenario",
        envvar="CRMSYNC_MOCK_SCENARIO",
        help="seed: 25 Salesforce at 100/s + 25 HubSpot at 50/s; demo: 2 + 2; none.",
    ),
    salesforce: int | None = typer.Option(
        None, "--salesforce", envvar="CRMSYNC_MOCK_SALESFORCE", help="Serve N Salesforce accounts."
    ),
    hubspot: int | None = typer.Option(
        None, "--hubspot", envvar="CRMSYNC_MOCK_HUBSPOT", help="Serve N HubSpot accounts."
    ),
    sf_limit: str | None = typer.Option(
        None, "--sf-limit", envvar="CRMSYNC_MOCK_SF_LIMIT", help="e.g. 100/s; 0 = unlimited."
    ),
    hs_limit: str | None = typer.Option(
        None, "--hs-limit", envvar="CRMSYNC_MOCK_HS_LIMIT", help="e.g. 50/s, 100/10s."
    ),
    latency_ms: float = typer.Option(2.0, "--latency-ms", envvar="CRMSYNC_MOCK_LATENCY_MS"),
    jitter_ms: float = typer.Option(1.0, "--jitter-ms", envvar="CRMSYNC_MOCK_JITTER_MS"),
    error_rate: float = typer.Option(
        0.0, "--error-rate", envvar="CRMSYNC_MOCK_ERROR_RATE", help="Share answered 5xx."
    ),
    lost_rate: float = typer.Option(
        0.0, "--lost-rate", envvar="CRMSYNC_MOCK_LOST_RATE", help="Share of writes left unanswered."
    ),
    slow_ms: float = typer.Option(0.0, "--slow-ms", envvar="CRMSYNC_MOCK_SLOW_MS"),
    seed: int | None = typer.Option(None, "--seed", envvar="CRMSYNC_MOCK_SEED"),
    as_json: bool = typer.Option(
        False, "--json", envvar="CRMSYNC_MOCK_JSON", help="Print the accounts as one JSON line."
    ),
) -> None:
    """Run mock CRMs with real wire formats, strict limits and injectable faults.

    Control them at run time under /_control/ (accounts, faults, stats,
    records/<crm>/<account>, reset).
    """
    from crmsync_lab.mock.config import HS_SEED, SF_SEED, MockConfig, accounts
    from crmsync_lab.mock.config import scenario as named
    from crmsync_lab.mock.faults import Faults
    from crmsync_lab.mock.limits import Window, parse_limit
    from crmsync_lab.mock.server import MockHandle, run_mock

    def limit_flag(flag: str, spec: str | None) -> Window | None:
        try:
            return parse_limit(spec) if spec is not None else None
        except ValueError as exc:
            raise UserError(f"mock-crm {flag}: {exc}") from exc

    sf_window = limit_flag("--sf-limit", sf_limit)
    hs_window = limit_flag("--hs-limit", hs_limit)
    try:
        specs = named(scenario)
        faults = {"error_rate": error_rate, "lost_rate": lost_rate, "slow_ms": slow_ms}
        Faults().apply(faults)  # the same checks as POST /_control/faults
        config = MockConfig(latency_ms=latency_ms, jitter_ms=jitter_ms, faults=faults, seed=seed)
    except ValueError as exc:
        raise UserError(f"mock-crm: {exc}") from exc
    if salesforce is not None:
        specs = [s for s in specs if s.crm != "salesforce"]
        specs += accounts("salesforce", salesforce, sf_window or SF_SEED)
    if hubspot is not None:
        specs = [s for s in specs if s.crm != "hubspot"]
        specs += accounts("hubspot", hubspot, hs_window or HS_SEED)
    window = {"salesforce": sf_window, "hubspot": hs_window}
    config.accounts = [replace(s, limits=(w,)) if (w := window[s.crm]) else s for s in specs]

    def ready(handle: MockHandle) -> None:
        rows = [
            {
                "crm": s.crm,
                "account": s.name,
                "base_url": handle.base_url(s.crm, s.name),
                "token": s.bearer,
                "limit": f"{s.limits[0].limit}/{s.limits[0].window_ms}ms" if s.limits else "0",
            }
            for s in config.accounts
        ]
        if as_json:
            typer.echo(orjson.dumps({"url": handle.url, "accounts": rows}).decode())
        else:
            typer.echo(f"mock CRM serving {len(rows)} account(s) at {handle.url}")
            for r in rows:
                line = f"{r['crm']:<10} {r['account']:<12} {r['base_url']}  {r['token']}"
                typer.echo(f"  {line}  {r['limit']}")
            typer.echo(f"control: {handle.url}/_control/stats  (faults, records, reset)")
        sys.stdout.flush()

    async def go() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            await run_mock(config, host=host, port=port, on_ready=ready, stop=stop)
        except OSError as exc:
            why = exc.strerror or str(exc)
            raise UserError(f"mock-crm cannot listen on {host}:{port} ({why}); use --port") from exc

    run(go())
