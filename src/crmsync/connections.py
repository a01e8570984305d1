"""CRM connections: validation and CRUD in PostgreSQL, shared by the CLI and the API.

PostgreSQL is the source of truth; workers mirror connections (limits, pause
state) into Redis themselves. Every change notifies ``crmsync_connections``
with the connection id, in the same statement, so workers react at once.
Credentials are stored sealed (crmsync.vault) and opened only in memory, by the
workers; users see the token's last 4 characters at most.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import orjson

from crmsync import db, redact
from crmsync.contacts import ID_RULE, is_id
from crmsync.errors import UserError
from crmsync.ratelimit import RateWindow, format_rate, parse_rate_limit
from crmsync.vault import Keyring

CRMS: tuple[str, ...] = ("salesforce", "hubspot")
# Used when `connections add` gets no --rate-limit (documented in its --help):
# Salesforce 100/s; HubSpot 100 per TEN_SECONDLY_ROLLING window (Free/Starter tier).
DEFAULT_RATE_LIMITS: dict[str, tuple[str, ...]] = {
    "salesforce": ("100/s",),
    "hubspot": ("100/10s",),
}
DEFAULT_PAUSE_REASON = "paused by operator"


def rate_limits_json(specs: Sequence[str], crm: str) -> list[dict[str, int]]:
    """The ``rate_limits`` jsonb of a connection; the CRM's default when none given."""
    out: list[dict[str, int]] = []
    for spec in list(specs) or list(DEFAULT_RATE_LIMITS[crm]):
        try:
            w = parse_rate_limit(spec)
        except UserError as exc:
            raise UserError(f"--rate-limit: {exc}") from None
        if any(o["window_ms"] == w.window_ms for o in out):
            raise UserError(f"--rate-limit {spec!r} repeats a window already given")
        out.append({"limit": w.limit, "window_ms": w.window_ms})
    return sorted(out, key=lambda o: o["window_ms"])


def format_rate_limits(windows: Sequence[Mapping[str, Any]]) -> str:
    return ", ".join(format_rate(RateWindow(int(w["limit"]), int(w["window_ms"]))) for w in windows)


def parse_settings(pairs: Sequence[str]) -> dict[str, Any]:
    """``KEY=VALUE`` adapter settings; JSON numbers, booleans and objects
    (e.g. ``field_map={"company": "Account_Name__c"}``) keep their type."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise UserError(f"--settings {pair!r} is not KEY=VALUE (e.g. api_version=v60.0)")
        value: Any = raw
        try:
            parsed = orjson.loads(raw)
            if isinstance(parsed, bool | int | float | dict):
                value = parsed
        except orjson.JSONDecodeError:
            pass
        out[key] = value
    return out


UNSEALED_HINT = "(stored in clear: run `crmsync migrate` with CRMSYNC_SECRET_KEY set)"


@dataclass(frozen=True, slots=True)
class Connection:
    """One CRM account that a tenant's contacts sync to."""

    id: str
    tenant: str
    crm: str
    account: str
    base_url: str
    token: str = field(repr=False)
    windows: tuple[RateWindow, ...]
    settings: Mapping[str, Any] = field(default_factory=dict)
    paused_reason: str | None = None

    @classmethod
    def from_row(cls, row: Mapping[str, Any], keys: Keyring) -> Connection:
        """A row of ``worker_connections``, its credentials opened with ``keys``
        (vault.SecretsError when they do not open: never a plaintext fallback)."""
        limits = row["rate_limits"] or []
        secrets = keys.open(row["id"], row["secrets"])
        redact.remember(secrets.values())  # masked in every log line from now on
        return cls(
            id=row["id"],
            tenant=row["tenant"],
            crm=row["crm"],
            account=row["account"],
            base_url=row["base_url"],
            token=secrets.get("token", ""),
            windows=tuple(RateWindow(int(w["limit"]), int(w["window_ms"])) for w in limits),
            settings=dict(row["settings"] or {}),
            paused_reason=row["paused_reason"],
        )

    @property
    def rate_limits(self) -> list[dict[str, int]]:
        """The ``rate_limits`` jsonb of the row."""
        return [{"limit": w.limit, "window_ms": w.window_ms} for w in self.windows]

    def _int_setting(self, name: str, default: int) -> int:
        try:
            return int(self.settings.get(name, default))
        except (TypeError, ValueError):
            return default

    def batch_size(self, default: int, adapter_max: int) -> int:
        """Records per request: the connection's setting, else the global one."""
        return max(1, min(self._int_setting("batch_size", default), adapter_max))

    def max_in_flight(self, default: int) -> int:
        """Requests this connection may have in flight per worker process at most
        (``max_in_flight``: a CRM's own concurrency cap), else ``default``."""
        return max(1, min(self._int_setting("max_in_flight", default), default))


def parse_base_url(base_url: str) -> str:
    """A CRM's base URL: http(s), a host, no credentials (they would be stored and
    shown in clear: the token is the credential, sealed at rest)."""
    shown = redact.text(base_url.strip())[:200]
    try:
        parts = urlsplit(base_url.strip())
        parts.port  # noqa: B018 - raises ValueError on a port that is not a number
    except ValueError:
        raise UserError(f"--base-url {shown!r} is not a valid URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UserError(f"--base-url {shown!r} must be an http:// or https:// URL")
    if parts.username is not None or parts.password is not None:
        raise UserError(
            "--base-url must not carry credentials (user:password@host): give the "
            "CRM's token with --token, which is stored encrypted"
        )
    return base_url.strip().rstrip("/")


def parse_connection(
    *,
    id: str,
    crm: str,
    account: str,
    base_url: str,
    token: str,
    tenant: str = "default",
    rate_limits: Sequence[str] = (),
    settings: Sequence[str] = (),
) -> Connection:
    """Validate the flags of ``connections add``; each problem names its flag."""
    if not is_id(id):
        raise UserError(f"connection id {id!r} must be {ID_RULE}")
    if not is_id(tenant):
        raise UserError(f"--tenant {tenant!r} must be {ID_RULE}")
    crm = crm.strip().lower()
    if crm not in CRMS:
        raise UserError(f"--crm {crm!r} must be one of {', '.join(CRMS)}")
    account = account.strip()
    if not account or len(account) > 255:
        raise UserError("--account must be 1-255 characters naming the CRM account")
    url = parse_base_url(base_url)
    if not token.strip():
        raise UserError("--token must not be empty")
    return Connection(
        id=id,
        tenant=tenant,
        crm=crm,
        account=account,
        base_url=url,
        token=token.strip(),
        windows=tuple(
            RateWindow(w["limit"], w["window_ms"]) for w in rate_limits_json(rate_limits, crm)
        ),
        settings=parse_settings(settings),
    )


def public_view(row: Mapping[str, Any]) -> dict[str, Any]:
    """A connection row as shown to users: token hint only, times as ISO strings."""
    created = row.get("created_at")
    return {
        "id": row["id"],
        "tenant": row["tenant"],
        "crm": row["crm"],
        "account": row["account"],
        "base_url": row["base_url"],
        "token": row["token_hint"] if row["sealed"] else UNSEALED_HINT,
        "rate_limits": list(row["rate_limits"] or []),
        "settings": dict(row["settings"] or {}),
        "paused": row["paused_reason"] is not None,
        "paused_reason": row["paused_reason"],
        "created_at": created.isoformat() if created is not None else None,
    }


async def add(pg: db.Executor, spec: Connection, keys: Keyring) -> None:
    """Store a new connection, its token sealed under the current key of ``keys``."""
    try:
        await pg.execute(
            db.q("connections_add"),
            spec.id,
            spec.tenant,
            spec.crm,
            spec.account,
            spec.base_url,
            keys.seal(spec.id, {"token": spec.token}),
            redact.mask(spec.token),
            spec.rate_limits,
            spec.settings,
        )
    except asyncpg.UniqueViolationError:
        raise UserError(f"connection {spec.id!r} already exists") from None


async def list_all(pg: db.Executor, tenant: str | None = None) -> list[dict[str, Any]]:
    """Every connection (of ``tenant`` only, when given), as users see them."""
    return [public_view(r) for r in await pg.fetch(db.q("connections_list"), tenant)]


async def seal_unsealed(conn: asyncpg.Connection[Any], keys: Keyring) -> int:
    """Seal the plaintext tokens kept from before encryption at rest (migration
    0009) under the current key, in one transaction; returns how many."""
    async with conn.transaction():
        rows = await conn.fetch(db.q("connections_unsealed"))
        await _store_sealed(conn, keys, [(r["connection_id"], {"token": r["token"]}) for r in rows])
        await conn.execute(db.q("connections_forget_unsealed"), [r["connection_id"] for r in rows])
    return len(rows)


async def count_unsealed(pg: db.Executor) -> int:
    n: int = await pg.fetchval(db.q("connections_count_unsealed"))
    return n


async def rotate_secrets(conn: asyncpg.Connection[Any], old: Keyring, new: Keyring) -> int:
    """Re-seal every connection's credentials under ``new``'s current key, in one
    transaction: all of them or, when one does not open with ``old``, none.
    Plaintext tokens left from before encryption are sealed too. Returns how many."""
    async with conn.transaction():
        rows = await conn.fetch(db.q("connections_sealed_for_update"))
        opened = [(r["id"], old.open(r["id"], r["secrets"])) for r in rows]
        unsealed = await conn.fetch(db.q("connections_unsealed"))
        opened += [(r["connection_id"], {"token": r["token"]}) for r in unsealed]
        await _store_sealed(conn, new, opened)
        await conn.execute(
            db.q("connections_forget_unsealed"), [r["connection_id"] for r in unsealed]
        )
    return len(opened)


async def _store_sealed(
    conn: asyncpg.Connection[Any], keys: Keyring, items: Sequence[tuple[str, Mapping[str, str]]]
) -> None:
    await conn.execute(
        db.q("connections_set_secrets"),
        [cid for cid, _ in items],
        [keys.seal(cid, secrets) for cid, secrets in items],
        [redact.mask(secrets.get("token")) for _, secrets in items],
    )


async def remove(pg: db.Executor, connection_id: str) -> None:
    """Delete a connection; its sync_state and dead letters go with it (cascade)."""
    if await pg.fetchval(db.q("connections_remove"), connection_id) is None:
        raise _unknown(connection_id)


async def pause(pg: db.Executor, connection_id: str, reason: str = DEFAULT_PAUSE_REASON) -> None:
    reason = reason.strip() or DEFAULT_PAUSE_REASON
    if await pg.fetchval(db.q("connections_set_paused"), connection_id, reason) is None:
        raise _unknown(connection_id)


async def resume(pg: db.Executor, connection_id: str) -> None:
    if await pg.fetchval(db.q("connections_set_paused"), connection_id, None) is None:
        raise _unknown(connection_id)


def _unknown(connection_id: str) -> UserError:
    return UserError(
        f"no connection {connection_id!r}; `crmsync connections list` shows the existing ones"
    )
