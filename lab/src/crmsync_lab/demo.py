"""``crmsync demo``: the whole system on one machine, zero configuration.

Starts mock CRMs, the API, the relay and the workers (``crmsync_lab.harness``),
adds a connection per mock account, sends realistic contacts through the
HTTP API in two waves (creates, then edits and deletes), shows live progress,
and ends with a summary per connection and a check of every CRM record
against the sync rules. A share of the contacts already exist in every mock
CRM (same emails, entered before crmsync): the connections adopt them.
``--faults`` adds a CRM outage and a 429 storm so the circuit breaker and the
rate limiter visibly do their work.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Literal

from rich.console import Console, Group
from rich.live import Live
from rich.text import Text

from crmsync.settings import Settings
from crmsync_lab.harness import contacts, progress
from crmsync_lab.harness.cluster import Cluster, ClusterConfig, ConnectionInfo, database_named
from crmsync_lab.harness.expect import Report
from crmsync_lab.mock import seeding

TENANT = "demo"
# The share of contacts the CRMs already hold before crmsync (chosen by email).
EXISTING_SHARE = 0.2
OUTAGE_SECONDS = 8.0
STORM_SECONDS = 5.0
# The connections use OAuth (refresh-token flow) and the mock issues access tokens
# that expire every few seconds (no static tokens): refreshes happen during the run.
TOKEN_LIFETIME_SECONDS = 5.0
MOCK_OAUTH_ARGS = (
    "--oauth",
    "--token-lifetime",
    f"{TOKEN_LIFETIME_SECONDS:g}",
    "--no-static-tokens",
)
# The default scenario's mocks hold each CRM's own limits (docs/LIMITS.md) over a
# day compressed to a minute, so the daily budgets matter within the run:
# Salesforce orgs with a rolling allocation (spread at most 1/24 per 2.5 s) and
# 25 requests in flight; HubSpot portals at the capacity tier (250 per 10 s) with
# their day ending at midnight in New York. The connections get the matching
# settings (limit_model=crm, ...) from the mock's accounts.
DAY_SECONDS = 60.0
MOCK_LIMIT_ARGS = (
    "--limit-model",
    "crm",
    "--day-seconds",
    f"{DAY_SECONDS:g}",
    "--sf-daily",
    "2400",
    "--hs-tier",
    "250",
    "--hs-daily",
    "2000",
    "--hs-time-zone",
    "America/New_York",
)
# With faults, recover fast and retry patiently so a newcomer sees the breaker
# open and close within the minute and nothing ends as a dead letter.
FAULT_SETTINGS = {
    "CRMSYNC_BREAKER_RECOVERY_SECONDS": "3",
    "CRMSYNC_RETRY_BASE_SECONDS": "0.5",
    "CRMSYNC_RETRY_CAP_SECONDS": "4",
    "CRMSYNC_RETRY_ATTEMPTS": "12",
}


@dataclass(frozen=True)
class DemoOptions:
    contacts: int = 500
    scenario: Literal["default", "seed"] = "default"
    faults: bool = False
    batch_size: int = 1
    processes: int = 1
    keep: bool = False
    database: str = "crmsync_demo"  # dropped and recreated at every run
    seed: int = 42
    timeout: float = 180.0  # seconds to wait for the CRMs to reach their final state


class Demo:
    def __init__(self, options: DemoOptions, console: Console) -> None:
        self.options = options
        self.console = console
        self.phase = "starting"
        self.started = time.monotonic()
        self.rates = progress.Rates()
        self.snapshot: dict[str, Any] | None = None
        self.cluster: Cluster | None = None
        self.result: int | None = None  # the verification's exit code, once known

    def config(self) -> ClusterConfig:
        o = self.options
        defaults = Settings()
        return ClusterConfig(
            database_url=database_named(defaults.database_url, o.database),
            redis_url=defaults.redis_url,
            redis_mode=defaults.redis_mode,
            fresh_database=True,
            mode="up",
            processes=o.processes,
            batch_size=o.batch_size,
            mock_scenario="seed" if o.scenario == "seed" else "demo",
            # The seed scenario keeps its per-second windows (the seed's figures).
            mock_args=MOCK_OAUTH_ARGS + (() if o.scenario == "seed" else MOCK_LIMIT_ARGS),
            auth="oauth",
            tenant=TENANT,
            env=FAULT_SETTINGS if o.faults else {},
        )

    # -- the run ---------------------------------------------------------------
    async def run(self) -> int:
        o = self.options
        self.console.print(
            f"[bold]crmsync demo[/bold]: {o.contacts} contacts, "
            f"{'50 accounts (seed)' if o.scenario == 'seed' else '2 Salesforce + 2 HubSpot'}"
            f"{', with faults' if o.faults else ''}; starting mock CRMs, API, relay, workers..."
        )
        async with Cluster(self.config()) as cluster:
            self.cluster = cluster
            self._intro(cluster)
            synced = await self._with_progress(cluster, self._scenario)
            code = self.result = await self._summary(cluster, synced)
            if o.keep:
                await self._keep(cluster)
            return code

    async def _scenario(self, cluster: Cluster) -> bool:
        o = self.options
        people = contacts.generate(o.contacts, seed=o.seed, tenant=TENANT, id_prefix="demo")
        no_company = sum(1 for c in people if not c.company)
        inactive = sum(1 for c in people if c.status == "inactive")
        existing = [c for c in people if seeding.chosen(c.email, EXISTING_SHARE)]
        self.phase = f"seeding {len(existing)} contacts the CRMs already hold (same emails)"
        await cluster.seed([_entered_by_hand(c) for c in existing])
        self.phase = (
            f"wave 1: {len(people)} new contacts ({no_company} without company, "
            f"{inactive} inactive) via POST /v1/contacts:batch"
        )
        await cluster.put_contacts(people, chunk=200)
        if o.faults:
            await self._inject_faults(cluster)
        await asyncio.sleep(2.0)  # let the first wave flow before editing it
        updated, deleted = contacts.plan_changes(people, seed=o.seed + 1)
        self.phase = f"wave 2: {len(updated)} edits, then {len(deleted)} deletes"
        await cluster.put_contacts(updated, chunk=200)
        await cluster.delete(deleted)
        self.phase = "waiting for every CRM to reach its final state"
        return await cluster.wait_synced(o.timeout)

    async def _inject_faults(self, cluster: Cluster) -> None:
        sf = _first(cluster.connections, "salesforce")
        hs = _first(cluster.connections, "hubspot")
        if sf is not None:
            await cluster.set_faults(sf.account, "salesforce", outage_seconds=OUTAGE_SECONDS)
        if hs is not None:
            await cluster.set_faults(hs.account, "hubspot", storm_seconds=STORM_SECONDS)
        names = ", ".join(
            f"{what} on {c.id}"
            for what, c in (
                (f"{OUTAGE_SECONDS:g}s outage (503)", sf),
                (f"{STORM_SECONDS:g}s 429 storm", hs),
            )
            if c is not None
        )
        self.phase = f"faults injected: {names}"
        self.console.print(f"[yellow]faults injected:[/yellow] {names}")

    # -- live progress -----------------------------------------------------------
    async def _with_progress(
        self, cluster: Cluster, work: Callable[[Cluster], Coroutine[Any, Any, bool]]
    ) -> bool:
        """Run ``work`` while a rich Live view (or, without a terminal, a line every
        few seconds) shows each connection's progress."""
        task: asyncio.Task[bool] = asyncio.create_task(work(cluster))
        terminal = self.console.is_terminal
        last_line = 0.0
        live = (
            Live(console=self.console, refresh_per_second=4, transient=False) if terminal else None
        )
        with live if live is not None else contextlib.nullcontext():
            while not task.done():
                await self._refresh(cluster)
                if live is not None:
                    live.update(self._view())
                elif time.monotonic() - last_line >= 5.0:
                    last_line = time.monotonic()
                    self.console.print(self._line())
                await asyncio.wait({task}, timeout=0.25)
            await self._refresh(cluster)
            if live is not None:
                live.update(self._view())
        return task.result()

    async def _refresh(self, cluster: Cluster) -> None:
        with contextlib.suppress(Exception):  # a status read must never stop the demo
            self.snapshot = await cluster.status()

    def _elapsed(self) -> str:
        return f"{time.monotonic() - self.started:5.1f}s"

    def _view(self) -> Group:
        snap = self.snapshot or {"connections": []}
        rates = self.rates.update(snap)
        header = Text.assemble(
            (f"[{self._elapsed()}] ", "dim"),
            (self.phase, "bold"),
            (f"   outbox {progress.outbox_pending(snap)}", "dim"),
        )
        return Group(header, progress.live_table(snap, rates))

    def _line(self) -> str:
        snap = self.snapshot or {"connections": []}
        t = progress.totals(
            snap, ("created", "adopted", "updated", "deleted", "skipped", "requests")
        )
        queued = sum(progress.queued(c) for c in snap["connections"])
        return (
            f"[{self._elapsed()}] {self.phase} | queued {queued}, created {t['created']}, "
            f"adopted {t['adopted']}, "
            f"updated {t['updated']}, deleted {t['deleted']}, skipped {t['skipped']}, "
            f"requests {t['requests']}"
        )

    # -- the end -------------------------------------------------------------------
    def _intro(self, cluster: Cluster) -> None:
        self.console.print(
            f"dashboard {_dashboard_url(cluster)}   (live while the demo runs)\n"
            f"API      {cluster.api_url}   (key: {cluster.api_key})\n"
            f"         try: curl -H 'Authorization: Bearer {cluster.api_key}' "
            f"{cluster.api_url}/v1/status\n"
            f"mock CRM {cluster.mock_url}/_control/stats\n"
            f"logs     {cluster.run_dir}/\n"
            f"connections: {', '.join(c.id for c in cluster.connections)}"
        )

    async def _summary(self, cluster: Cluster, synced: bool) -> int:
        snapshot = await cluster.status()
        report: Report = await cluster.verify()
        mock = await cluster.mock_stats()
        elapsed = time.monotonic() - self.started
        self.console.print(progress.summary_table(snapshot, report, mock["accounts"]))
        totals = mock["totals"]
        auth = [a.get("auth", {}) for a in mock["accounts"].values()]
        grants = sum(int(a.get("refresh_grants", 0)) for a in auth)
        expired = sum(int(a.get("expired_rejections", 0)) for a in auth)
        self.console.print(
            f"mock CRMs: {totals['requests']} requests, {totals['records']} records, "
            f"{totals['violations']} limit violations, {totals['duplicates']} duplicates, "
            f"busiest second {totals['max_in_any_1s']} requests; {grants} access tokens "
            f"issued, {expired} requests met an expired one (sent again with the new one)"
        )
        counts = progress.totals(snapshot, ("token_refreshes", "auth_pauses", "adopted"))
        by_email = sum(
            int((a.get("duplicates_by") or {}).get("email", 0)) for a in mock["accounts"].values()
        )
        untouched = sum(c.untouched for c in report.connections)
        self.console.print(
            f"existing records: {len(cluster.preexisting)} contacts were in every CRM before "
            f"crmsync; {counts['adopted']} records adopted (matched by email, given our id), "
            f"{untouched} left alone (their contact is not synced there), {by_email} duplicates "
            "by email"
        )
        problems = report.problems()
        if counts["auth_pauses"]:
            problems.append(f"{counts['auth_pauses']} pause(s) for refused credentials")
        if not synced:
            unsettled = await cluster.unsettled()
            problems.insert(
                0,
                f"not settled after {self.options.timeout:g}s: "
                + ", ".join(f"{k} {v} pending" for k, v in unsettled.items()),
            )
        if problems:
            self.console.print(f"[bold red]FAILED[/bold red] after {elapsed:.1f}s:")
            for p in problems:
                self.console.print(f"  - {p}")
            self.console.print(f"logs: {cluster.run_dir}/")
            return 1
        self.console.print(
            f"[bold green]OK[/bold green] in {elapsed:.1f}s: every contact is in its expected "
            f"state in every CRM, 0 duplicates, 0 limit violations, "
            f"{counts['adopted']} existing records adopted, "
            f"{counts['token_refreshes']} token refreshes, 0 pauses."
        )
        return 0

    async def _keep(self, cluster: Cluster) -> None:
        self.console.print(
            f"--keep: still running. Dashboard {_dashboard_url(cluster)}\n"
            f"API {cluster.api_url} (Bearer {cluster.api_key}), "
            f"mock {cluster.mock_url}. Ctrl-C stops everything."
        )
        while True:
            cluster.check_alive()
            await asyncio.sleep(1.0)


def _dashboard_url(cluster: Cluster) -> str:
    """The dashboard, signed in with the demo's key (the page moves it from the
    address into the tab's sessionStorage; a fragment never reaches the server)."""
    return f"{cluster.api_url}/ui#key={cluster.api_key}"


def _first(conns: list[ConnectionInfo], crm: str) -> ConnectionInfo | None:
    return next((c for c in conns if c.crm == crm), None)


async def run_demo(options: DemoOptions, console: Console | None = None) -> int:
    """Run the demo; the exit code: 0 verified, 1 a check failed, 130 interrupted
    before the end (with ``--keep``, Ctrl-C after the summary keeps its code).

    The first Ctrl-C (or SIGTERM) stops every process cleanly; a second one
    kills them at once.
    """
    if console is None:
        console = Console()
        if not console.is_terminal:  # logs and CI: room for the summary table
            console = Console(width=max(console.width, 140))
    demo = Demo(options, console)
    loop = asyncio.get_running_loop()
    me = asyncio.current_task()
    interrupts = 0

    def interrupt() -> None:
        nonlocal interrupts
        interrupts += 1
        if interrupts == 1 and me is not None:
            console.print("[yellow]stopping every process...[/yellow]")
            me.cancel()
        elif demo.cluster is not None:
            demo.cluster.kill_all_now()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, interrupt)
    try:
        return await demo.run()
    except asyncio.CancelledError:
        if interrupts == 0:
            raise
        console.print("[yellow]interrupted; everything stopped.[/yellow]")
        # --keep: the run itself finished; its verdict stands.
        return 130 if demo.result is None else demo.result
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


def _entered_by_hand(c: contacts.Contact) -> dict[str, Any]:
    """A contact as someone typed it into the CRM before crmsync: same email (in
    other letters' case), an older last name, a phone number crmsync never sends."""
    return {
        "email": c.email.capitalize(),
        "first_name": c.first_name,
        "last_name": f"{c.last_name} (old)",
        "phone": "+1 555 0100",
    }
