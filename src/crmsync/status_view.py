"""What `crmsync status` draws: the status report, readable at 80 columns.

One row per connection with short columns when that fits the screen unwrapped,
else one block of two lines per connection: ids and states are never cut or
squeezed. Long text (why a connection is paused) goes under the table, wrapped
to the screen, instead of into a narrow column.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from rich import box
from rich.console import Console, Group, RenderableType
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

COLUMNS = ("connection", "crm", "state", "queued", "oldest", "synced", "dead", "429s", "lag99")
CRM_SHORT = {"salesforce": "sf", "hubspot": "hs"}


def state_of(c: Mapping[str, Any]) -> tuple[str, str]:
    """(label, style) of what a connection is doing; the breaker is named as such."""
    if c.get("paused"):
        return "paused", "red"
    breaker = c.get("breaker")
    if breaker == "open":
        return "breaker open", "red"
    if breaker == "half_open":
        return "breaker half-open", "yellow"
    if c.get("blocked_for_s"):
        return f"blocked {c['blocked_for_s']:g}s", "yellow"
    if "queue" not in c:
        return "unknown", "yellow"
    return ("sending", "green") if queued(c) else ("idle", "dim")


def queued(c: Mapping[str, Any]) -> int:
    q = c.get("queue") or {}
    return sum(int(q.get(k) or 0) for k in ("ready", "leased", "delayed", "requeue"))


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.0f}s"
    if seconds < 3600:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


def millis(ms: float | None) -> str:
    if ms is None:
        return "-"
    if ms == float("inf"):
        return ">1h"
    return f"{ms:g}ms" if ms < 1000 else duration(ms / 1000)


def count(n: int) -> str:
    """At most 5 characters: 12345, 123k, 12.3M."""
    if n < 100_000:
        return str(n)
    if n < 10_000_000:
        return f"{n // 1000}k"
    return f"{n / 1_000_000:.1f}M"


def _figures(c: Mapping[str, Any]) -> list[tuple[str, str | Text]]:
    lag = (c.get("sync_lag_ms") or {}).get("p99")
    dead = int(c["dead_letters"])
    return [
        ("queued", count(queued(c)) if "queue" in c else "?"),
        ("oldest", duration(c.get("oldest_age_s"))),
        ("synced", count(int(c["sync"].get("synced", 0)))),
        ("dead", Text(count(dead), style="red" if dead else "")),
        ("429s", count(int((c.get("counters") or {}).get("crm_rate_limited", 0)))),
        ("lag99", millis(lag)),
    ]


def _blocks(conns: list[Mapping[str, Any]]) -> list[RenderableType]:
    out: list[RenderableType] = []
    for c in conns:
        label, style = state_of(c)
        out.append(Text.assemble((c["id"], "bold"), f" ({c['crm']}) ", (label, style)))
        line = Text("  ")
        for i, (name, value) in enumerate(_figures(c)):
            line.append(("" if i == 0 else ", ") + f"{name} ")
            line.append(value)
        out.append(line)
    return out


def render(report: Mapping[str, Any], width: int = 80) -> RenderableType:
    """The report as a table (or blocks, see the module) and notes, ``width`` wide."""
    conns = report["connections"]
    t = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, padding=(0, 0))
    for name in COLUMNS:
        left = name in ("connection", "crm", "state")
        t.add_column(name, justify="left" if left else "right", no_wrap=True)
    for c in conns:
        label, style = state_of(c)
        t.add_row(
            Text(c["id"]),  # as written: a str cell would turn an id like :a: into an emoji
            CRM_SHORT.get(c["crm"], c["crm"]),
            Text(label, style=style),
            *(value for _, value in _figures(c)),
        )
    wide = Console(width=10_000)  # measures the table's natural width, unclamped
    if Measurement.get(wide, wide.options, t).maximum > width:
        return Group(*_blocks(conns), *_notes(report))
    return Group(t, Text(""), *_notes(report))


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def _printable(text: str) -> str:
    """A reason (often a CRM's own message) without control characters: an escape
    sequence must not drive the operator's terminal, nor break the wrapping."""
    return _CONTROL.sub(" ", text)


def _notes(report: Mapping[str, Any]) -> list[RenderableType]:
    """Pause reasons, token refreshes, totals and a Redis problem, each wrapped to
    the screen."""
    parts: list[RenderableType] = [
        Text.assemble((c["id"], "bold"), " paused: ", _printable(c.get("paused_reason") or ""))
        for c in report["connections"]
        if c.get("paused")
    ]
    parts += [
        Text.assemble(
            (c["id"], "bold"),
            f" blocked until {c['blocked_until']}: ",
            _printable(c.get("blocked_reason") or "the CRM asked to wait"),
        )
        for c in report["connections"]
        if c.get("blocked_for_s") and c.get("blocked_until")
    ]
    refreshed = [
        f"{c['id']} {n}"
        for c in report["connections"]
        if (n := int((c.get("counters") or {}).get("token_refreshes", 0)))
    ]
    if refreshed:  # OAuth access tokens renewed (by whichever worker won each refresh)
        parts.append(Text("token refreshes: " + ", ".join(refreshed), style="dim"))
    healed = [
        f"{c['id']} {n} (last {c.get('healed_at') or '?'})"
        for c in report["connections"]
        if (n := int(c.get("redis_heals") or 0))
    ]
    if healed:  # Redis lost the connection's state; the workers rebuilt it
        parts.append(Text("Redis heals: " + ", ".join(healed), style="yellow"))
    totals = report["totals"]
    parts.append(
        Text(
            f"contacts {totals['contacts']}  outbox {totals['outbox']}  "
            f"dead letters {totals['dead_letters']}  (crm: sf salesforce, hs hubspot; "
            "oldest: age of the oldest queued change; lag: commit to CRM acknowledgement)",
            style="dim",
        )
    )
    if "redis_error" in report:
        parts.append(Text(f"Redis unreachable: {report['redis_error']}", style="yellow"))
    return parts
