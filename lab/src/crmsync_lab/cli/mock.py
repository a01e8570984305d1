"""`crmsync mock-crm`: serve mock Salesforce and HubSpot accounts over HTTP."""

from __future__ import annotations

import asyncio
import shutil
import signal
import sys
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
import typer

from crmsync.cli.common import run
from crmsync.errors import UserError

if TYPE_CHECKING:
    from crmsync_lab.mock.config import AccountSpec

app = typer.Typer()


@app.command("mock-crm")
def mock_crm(
    host: str = typer.Option("127.0.0.1", "--host", envvar="CRMSYNC_MOCK_HOST"),
    port: int = typer.Option(9000, "--port", envvar="CRMSYNC_MOCK_PORT", help="0 = any free port."),
    scenario: str = typer.Option(
        "seed",
        "--scenario",
        envvar="CRMSYNC_MOCK_SCENARIO",
        help="seed: 25 Salesforce at 100/s + 25 HubSpot at 50/s; demo: 2 + 2 with OAuth apps "
        "(30 s tokens); none.",
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
    limit_model: str | None = typer.Option(
        None,
        "--limit-model",
        envvar="CRMSYNC_MOCK_LIMIT_MODEL",
        help="windows: the --sf-limit/--hs-limit windows (the scenario's); crm: each CRM's own "
        "(Salesforce daily allocation + concurrency cap, HubSpot 10-second tier + daily).",
    ),
    sf_daily: int | None = typer.Option(
        None,
        "--sf-daily",
        min=1,
        envvar="CRMSYNC_MOCK_SF_DAILY",
        help="crm model: Salesforce requests per rolling 24 hours (default 100000).",
    ),
    sf_concurrency: int = typer.Option(
        25,
        "--sf-concurrency",
        min=1,
        envvar="CRMSYNC_MOCK_SF_CONCURRENCY",
        help="crm model: Salesforce long-running requests at once.",
    ),
    sf_long_running_ms: int = typer.Option(
        20_000,
        "--sf-long-running-ms",
        min=1,
        envvar="CRMSYNC_MOCK_SF_LONG_RUNNING_MS",
        help="crm model: how long a request runs before it counts toward --sf-concurrency.",
    ),
    hs_tier: str = typer.Option(
        "professional",
        "--hs-tier",
        envvar="CRMSYNC_MOCK_HS_TIER",
        help="crm model: 100, 190 or 250 per 10 s, or free|starter|professional|enterprise|"
        "capacity.",
    ),
    hs_daily: int | None = typer.Option(
        None,
        "--hs-daily",
        min=1,
        envvar="CRMSYNC_MOCK_HS_DAILY",
        help="crm model: HubSpot requests per day (default: the tier's).",
    ),
    hs_time_zone: str = typer.Option(
        "UTC",
        "--hs-time-zone",
        envvar="CRMSYNC_MOCK_HS_TIME_ZONE",
        help="crm model: the portal's IANA time zone; its daily limit resets at midnight there.",
    ),
    day_seconds: float = typer.Option(
        86_400.0,
        "--day-seconds",
        min=0.001,
        envvar="CRMSYNC_MOCK_DAY_SECONDS",
        help="How many real seconds an account's day lasts (daily limits in seconds for tests).",
    ),
    oauth: bool | None = typer.Option(
        None,
        "--oauth/--no-oauth",
        envvar="CRMSYNC_MOCK_OAUTH",
        help="Give every account an OAuth app: client-<name>, secret-<name>, refresh-<name> "
        "(demo: on).",
    ),
    token_lifetime: float | None = typer.Option(
        None,
        "--token-lifetime",
        min=0.001,
        envvar="CRMSYNC_MOCK_TOKEN_LIFETIME",
        help="Seconds an OAuth access token lives (default: HubSpot 1800, Salesforce 7200, "
        "demo 30); implies --oauth.",
    ),
    static_tokens: bool = typer.Option(
        True,
        "--static-tokens/--no-static-tokens",
        envvar="CRMSYNC_MOCK_STATIC_TOKENS",
        help="Whether token-<name> works beside OAuth's access tokens.",
    ),
    tls: bool = typer.Option(
        False,
        "--tls",
        envvar="CRMSYNC_MOCK_TLS",
        help="Give each Salesforce org an https port of its own (its instance URL), with a "
        "generated test CA (--tls-dir).",
    ),
    tls_dir: Path | None = typer.Option(
        None,
        "--tls-dir",
        envvar="CRMSYNC_MOCK_TLS_DIR",
        help="Where --tls writes ca.pem, server.pem and server-key.pem (default: a temp dir).",
    ),
    tls_cert: Path | None = typer.Option(
        None, "--tls-cert", envvar="CRMSYNC_MOCK_TLS_CERT", help="Serve this certificate chain."
    ),
    tls_key: Path | None = typer.Option(
        None, "--tls-key", envvar="CRMSYNC_MOCK_TLS_KEY", help="The key of --tls-cert."
    ),
    seed_contacts: Path | None = typer.Option(
        None,
        "--seed-contacts",
        envvar="CRMSYNC_MOCK_SEED_CONTACTS",
        help="A contacts CSV (the `contacts import` format): load them into every account "
        "first, without crmsync's id.",
    ),
    seed_share: float = typer.Option(
        1.0,
        "--seed-share",
        min=0.0,
        max=1.0,
        envvar="CRMSYNC_MOCK_SEED_SHARE",
        help="Load only this share of --seed-contacts (chosen by email, the same every run).",
    ),
    sf_duplicates: str = typer.Option(
        "allow",
        "--sf-duplicates",
        envvar="CRMSYNC_MOCK_SF_DUPLICATES",
        help="allow, or block: Salesforce's duplicate rule answers DUPLICATES_DETECTED on a "
        "taken email.",
    ),
    id_field: str = typer.Option(
        "ok",
        "--id-field",
        envvar="CRMSYNC_MOCK_ID_FIELD",
        help="The external id field/property: ok, missing, not-unique, not-external-id.",
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

    Control them at run time under /_control/ (accounts, faults, tokens, clock,
    seed, stats, records/<crm>/<account>, reset).
    """
    from crmsync_lab.mock import seeding
    from crmsync_lab.mock import tls as tls_files
    from crmsync_lab.mock.clock import zone
    from crmsync_lab.mock.config import (
        DUPLICATE_RULES,
        HS_SEED,
        ID_FIELD,
        MODELS,
        SF_SEED,
        MockConfig,
        OAuthSpec,
        accounts,
    )
    from crmsync_lab.mock.config import scenario as named
    from crmsync_lab.mock.faults import Faults
    from crmsync_lab.mock.limits import Window, parse_limit
    from crmsync_lab.mock.models import tier
    from crmsync_lab.mock.server import MockHandle, run_mock

    def limit_flag(flag: str, spec: str | None) -> Window | None:
        try:
            return parse_limit(spec) if spec is not None else None
        except ValueError as exc:
            raise UserError(f"mock-crm {flag}: {exc}") from exc

    def choice(flag: str, value: str | None, allowed: tuple[str, ...]) -> None:
        if value is not None and value not in allowed:
            raise UserError(f"mock-crm {flag} must be one of {', '.join(allowed)}, not {value!r}")

    choice("--limit-model", limit_model, MODELS)
    choice("--sf-duplicates", sf_duplicates, DUPLICATE_RULES)
    choice("--id-field", id_field, ID_FIELD)
    for flag, check in (
        ("--hs-tier", lambda: tier(hs_tier)),
        ("--hs-time-zone", lambda: zone(hs_time_zone)),
    ):
        try:
            check()
        except ValueError as exc:
            raise UserError(f"mock-crm {flag}: {exc}") from exc
    sf_window = limit_flag("--sf-limit", sf_limit)
    hs_window = limit_flag("--hs-limit", hs_limit)
    made: Path | None = None  # a temp folder of our own for --tls, removed at the end
    if (tls_cert is None) != (tls_key is None):
        raise UserError("mock-crm --tls-cert and --tls-key go together")
    try:
        specs = named(scenario)
        faults = {"error_rate": error_rate, "lost_rate": lost_rate, "slow_ms": slow_ms}
        Faults().apply(faults)  # the same checks as POST /_control/faults
        config = MockConfig(latency_ms=latency_ms, jitter_ms=jitter_ms, faults=faults, seed=seed)
        rows = seeding.pick(seeding.read_csv(seed_contacts), seed_share) if seed_contacts else []
    except ValueError as exc:
        raise UserError(f"mock-crm: {exc}") from exc
    if salesforce is not None:
        specs = [s for s in specs if s.crm != "salesforce"]
        specs += accounts("salesforce", salesforce, sf_window or SF_SEED)
    if hubspot is not None:
        specs = [s for s in specs if s.crm != "hubspot"]
        specs += accounts("hubspot", hubspot, hs_window or HS_SEED)
    window = {"salesforce": sf_window, "hubspot": hs_window}
    daily = {"salesforce": sf_daily, "hubspot": hs_daily}

    def shaped(s: AccountSpec) -> AccountSpec:
        w = window[s.crm]
        changes: dict[str, Any] = {
            "day_seconds": day_seconds,
            "static_token": static_tokens,
            # not-external-id is Salesforce's alone; HubSpot keeps its property as it is
            "id_field": s.id_field
            if id_field == "not-external-id" and s.crm != "salesforce"
            else id_field,
            "duplicate_rule": sf_duplicates,
            "concurrency": sf_concurrency,
            "long_running_ms": sf_long_running_ms,
            "tier": hs_tier,
            "time_zone": hs_time_zone,
            "seed": tuple(rows),
        }
        if w:
            changes["limits"] = (w,)
        if limit_model is not None:
            changes["model"] = limit_model
        if daily[s.crm] is not None:
            changes["daily_limit"] = daily[s.crm]
        if oauth is False:
            changes["oauth"] = None
        elif oauth or token_lifetime is not None:
            app = s.oauth or OAuthSpec.default(s.crm, s.name)
            changes["oauth"] = replace(app, token_lifetime=token_lifetime or app.token_lifetime)
        return replace(s, **changes).check()

    try:
        config.accounts = [shaped(s) for s in specs]
        if tls_cert is not None and tls_key is not None:
            config.tls = tls_files.TlsFiles(tls_cert, tls_key)
        elif tls:
            folder = tls_dir
            if folder is None:
                folder = made = Path(tempfile.mkdtemp(prefix="crmsync-mock-tls-"))
            config.tls = tls_files.generate(folder, (host,))
        if config.tls is not None:
            config.tls.context()  # a certificate that cannot load fails here, in one sentence
    except ValueError as exc:
        raise UserError(f"mock-crm: {exc}") from exc

    def ready(handle: MockHandle) -> None:
        from crmsync_lab.mock.control import account_view

        rows_out = [account_view(handle.mock, a) for a in handle.mock.accounts.values()]
        ca = str(config.tls.ca) if config.tls is not None and config.tls.ca else None
        if as_json:
            typer.echo(
                orjson.dumps({"url": handle.url, "ca_file": ca, "accounts": rows_out}).decode()
            )
        else:
            typer.echo(f"mock CRM serving {len(rows_out)} account(s) at {handle.url}")
            for r in rows_out:
                w = r["limits"][0] if r["limits"] else None
                limit = f"{w['limit']}/{w['window_ms']}ms" if w else "0"
                line = f"{r['crm']:<10} {r['account']:<12} {r['base_url']}  {r['token']}"
                extra = (
                    f"  {r['instance_url']}"
                    if r.get("instance_url", "").startswith("https")
                    else ""
                )
                typer.echo(f"  {line}  {limit} ({r['model']}){extra}")
            if ca:
                typer.echo(f"TLS: Salesforce instance ports trust {ca}")
            more = "faults, tokens, clock, seed, records, reset"
            typer.echo(f"control: {handle.url}/_control/stats  ({more})")
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

    try:
        run(go())
    finally:
        if made is not None:
            shutil.rmtree(made, ignore_errors=True)
