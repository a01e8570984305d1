"""Rich views of a running cluster: the live progress table and the final summary.

Both read the ``crmsync.report.collect`` snapshot (queues, breaker, ledger,
worker counters, latency) plus, for the summary, the mock CRM's own counts and
the verification report, so what the demo shows is what an operator's
``crmsync status`` and the CRM itself would say.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

from rich import box
from rich.table import Table
from rich.text import Text

from crmsync_lab.harness.expect import ConnectionCheck, Report


class Rates:
    """Requests per second per connection, from the growth of the ``requests`` counter."""

    def __init__(self, span: float = 1.0) -> None:
        self.span = span
        self.samples: dict[str, list[tuple[float, int]]] = {}

    def update(self, snapshot: Mapping[str, Any], now: float | None = None) -> dict[str, float]:
        t = time.monotonic() if now is None else now
        out: dict[str, float] = {}
        for c in snapshot["connections"]:
            seen = self.samples.setdefault(c["id"], [])
            seen.append((t, int(c.get("counters", {}).get("requests", 0))))
            while len(seen) > 2 and seen[1][0] <= t - self.span:
                seen.pop(0)
            (t0, n0), (t1, n1) = seen[0], seen[-1]
            out[c["id"]] = (n1 - n0) / (t1 - t0) if t1 > t0 else 0.0
        return out


def state_of(c: Mapping[str, Any]) -> Text:
    """paused / breaker open / blocked by a 429 / ok, coloured."""
    if c.get("paused"):
        return Text(f"paused: {c.get('paused_reason') or 'yes'}", style="red")
    breaker = str(c.get("breaker") or "closed")
    if breaker != "closed":
        return Text(f"breaker {breaker}", style="red" if breaker == "open" else "yellow")
    if c.get("blocked_for_s"):
        return Text(f"429 wait {c['blocked_for_s']:.1f}s", style="yellow")
    return Text("ok", style="green")


def queued(c: Mapping[str, Any]) -> int:
    """Ids in the connection's Redis queue: ready, leased, delayed, requeued."""
    return sum(int(v or 0) for v in c.get("queue", {}).values())


def ledger(c: Mapping[str, Any], status: str) -> int:
    """Ledger rows of the connection in ``status`` (synced, skipped, deleted, retrying)."""
    return int(c.get("sync", {}).get(status, 0))


def outbox_pending(snapshot: Mapping[str, Any]) -> int:
    return int(snapshot.get("totals", {}).get("outbox", 0))


def live_table(
    snapshot: Mapping[str, Any], rates: Mapping[str, float], *, title: str = ""
) -> Table:
    t = Table(title=title or None, title_justify="left", box=box.SIMPLE_HEAD, padding=(0, 1, 0, 0))
    for col in ("connection", "crm", "state"):
        t.add_column(col, no_wrap=True)
    for col in ("queued", "synced", "skipped", "deleted", "retrying", "dead"):
        t.add_column(col, justify="right")
    t.add_column("429s", justify="right")
    t.add_column("limiter waits", justify="right")
    t.add_column("req/s", justify="right")
    for c in snapshot["connections"]:
        cnt = c.get("counters", {})
        t.add_row(
            c["id"],
            c["crm"],
            state_of(c),
            str(queued(c)),
            str(ledger(c, "synced")),
            str(ledger(c, "skipped")),
            str(ledger(c, "deleted")),
            str(ledger(c, "retrying")),
            _red(int(c.get("dead_letters", 0))),
            str(cnt.get("crm_rate_limited", 0)),
            str(limiter_waits(cnt)),
            f"{rates.get(c['id'], 0.0):.0f}",
        )
    return t


def limiter_waits(counters: Mapping[str, int]) -> int:
    """Times the connection had to wait: our limiter had no room, or a 429 blocked it."""
    return int(counters.get("refused_rate_limited", 0)) + int(counters.get("rate_limited_waits", 0))


def summary_table(
    snapshot: Mapping[str, Any],
    report: Report,
    mock_accounts: Mapping[str, Mapping[str, Any]],
    *,
    title: str = "summary",
) -> Table:
    """One row per connection: what crmsync did, what the CRM saw, and the check."""
    checks: dict[str, ConnectionCheck] = {c.connection_id: c for c in report.connections}
    t = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, padding=(0, 1, 0, 0))
    t.add_column("connection", no_wrap=True)
    cols = (
        "created", "adopted", "updated", "deleted", "skipped", "retried", "dead", "limit waits",
        "429s", "breaker trips", "tokens", "p50/p99 ms", "CRM records", "over limit", "dups",
    )  # fmt: skip
    for col in cols:
        t.add_column(col, justify="right", overflow="fold")
    t.add_column("check")
    for c in snapshot["connections"]:
        check = checks.get(c["id"])
        if check is None:
            continue
        cnt = c.get("counters", {})
        lat = c.get("latency_ms", {"p50": None, "p99": None})
        mock = mock_accounts.get(f"{check.crm}/{check.account}", {})
        t.add_row(
            c["id"],
            str(cnt.get("created", 0)),
            str(cnt.get("adopted", 0)),
            str(cnt.get("updated", 0)),
            str(cnt.get("deleted", 0)),
            str(cnt.get("skipped", 0)),
            str(cnt.get("retried", 0)),
            _red(int(cnt.get("dead_lettered", 0))),
            str(limiter_waits(cnt)),
            str(cnt.get("crm_rate_limited", 0)),
            str(cnt.get("breaker_trips", 0)),
            str(cnt.get("token_refreshes", 0)),
            f"{_ms(lat['p50'])}/{_ms(lat['p99'])}",
            f"{mock.get('records', check.present)}/{check.expected}",
            _red(check.violations),
            _red(check.duplicates),
            Text("ok", style="green") if check.ok else Text("FAIL", style="bold red"),
        )
    return t


def totals(snapshot: Mapping[str, Any], keys: Sequence[str]) -> dict[str, int]:
    out = dict.fromkeys(keys, 0)
    for c in snapshot["connections"]:
        for k in keys:
            out[k] += int(c.get("counters", {}).get(k, 0))
    return out


def _red(n: int) -> Text:
    return Text(str(n), style="bold red" if n else "")


def _ms(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v:g}" if v != float("inf") else "inf"
