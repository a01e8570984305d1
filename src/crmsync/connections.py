"""CRM connections: validation and CRUD in PostgreSQL, shared by the CLI and the API.

PostgreSQL is the source of truth; workers mirror connections (limits, pause
state) into Redis themselves. Every change notifies ``crmsync_connections``
with the connection id, in the same statement, so workers react at once.
Credentials are stored sealed (crmsync.vault) and opened only in memory, by the
workers; users see the token's last 4 characters at most. How a connection
authenticates (bearer, oauth-refresh, jwt: crmsync.crm.auth) is the ``auth``
column, with ``rev``, a random name of the credentials the operator set (a token
cached in Redis from other credentials is never used; a worker holding old ones
cannot pause the connection); the secrets share the one sealed JSON object.
"""

from __future__ import annotations

import secrets as pysecrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import orjson

from crmsync import connection_settings, crm_limits, db, redact
from crmsync.contacts import ID_RULE, is_id
from crmsync.crm.auth import (
    KINDS,
    SALESFORCE_LOGIN_URL,
    Auth,
    hint,
    is_auth_pause,
    load_private_key,
)
from crmsync.errors import UserError
from crmsync.ratelimit import RateWindow, format_rate, parse_rate_limit
from crmsync.vault import Keyring

BEARER = Auth()
CRMS: tuple[str, ...] = ("salesforce", "hubspot")
# The windows of a connection with limit_model=windows and no --rate-limit (stored
# before the CRM model existed): Salesforce 100/s; HubSpot 100 per 10 s. A new
# connection without --rate-limit gets the CRM's own model (crm_limits.py).
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


def describe_limits(conn: Connection) -> str:
    """The limits a connection holds, in a few words."""
    spec = conn.crm_spec
    windows = format_rate_limits(conn.rate_limits)
    if spec is None:
        return windows
    if spec.kind == "rolling":
        return (
            f"the CRM's: a rolling daily allocation ({spec.allocation} until learnt), "
            f"{windows}, {spec.concurrency} in flight"
        )
    return f"the CRM's: {windows}, {spec.allocation}/day from midnight in {spec.time_zone}"


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
    auth: Auth = BEARER
    # Every secret of the credentials (bearer: {"token"}; oauth-refresh:
    # client_secret, refresh_token; jwt: private_key).
    secrets: Mapping[str, str] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if not self.secrets and self.token:
            object.__setattr__(self, "secrets", {"token": self.token})

    @classmethod
    def from_row(cls, row: Mapping[str, Any], keys: Keyring) -> Connection:
        """A row of ``worker_connections``, its credentials opened with ``keys``
        (vault.SecretsError when they do not open: never a plaintext fallback)."""
        limits = row["rate_limits"] or []
        secrets = keys.open(row["id"], row["secrets"])
        redact.remember(secrets.values())  # masked in every log line from now on
        settings = dict(row["settings"] or {})
        windows = crm_limits.windows_of(row["crm"], settings) or tuple(
            RateWindow(int(w["limit"]), int(w["window_ms"])) for w in limits
        )
        return cls(
            id=row["id"],
            tenant=row["tenant"],
            crm=row["crm"],
            account=row["account"],
            base_url=row["base_url"],
            token=secrets.get("token", ""),
            windows=windows,
            settings=settings,
            paused_reason=row["paused_reason"],
            auth=Auth.from_json(row["auth"]),
            secrets=secrets,
        )

    @property
    def credentials(self) -> tuple[Auth, str]:
        """What names the credentials: a token source is rebuilt when this changes
        (a refresh token rotated by a worker keeps it)."""
        return self.auth, "" if self.auth.rev else self.secrets.get("token", "")

    @property
    def token_hint(self) -> str:
        return redact.mask(hint(self.auth, self.secrets))

    @property
    def crm_spec(self) -> crm_limits.CrmSpec | None:
        """What the CRM's own limit model adds to the windows (None: windows only)."""
        return crm_limits.spec_of(self.crm, self.settings)

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


def parse_connection(
    *,
    id: str,
    crm: str,
    account: str,
    base_url: str | None,
    token: str = "",
    tenant: str = "default",
    rate_limits: Sequence[str] = (),
    settings: Sequence[str] = (),
    auth: str = "bearer",
    client_id: str = "",
    client_secret: str = "",
    refresh_token: str = "",
    username: str = "",
    private_key: str = "",
    login_url: str = "",
) -> Connection:
    """Validate the flags of ``connections add``; each problem names its flag.
    ``private_key`` is the PEM text of ``--private-key FILE``."""
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
    kind = auth.strip().lower()
    if kind not in KINDS:
        raise UserError(f"--auth {auth!r} must be one of {', '.join(KINDS)}")
    given = {
        "--token": token,
        "--client-id": client_id,
        "--client-secret": client_secret,
        "--refresh-token": refresh_token,
        "--username": username,
        "--private-key": private_key,
        "--login-url": login_url,
    }
    given = {flag: v.strip() for flag, v in given.items() if v and v.strip()}
    needed, allowed = _credential_flags(crm, kind)
    for flag in given:
        if flag not in allowed:
            raise UserError(
                f"{flag} does not apply to --auth {kind} with --crm {crm} "
                f"(it takes {', '.join(allowed)})"
            )
    for flag in needed:
        if flag not in given:
            raise UserError(f"{flag} must not be empty with --auth {kind}")
    login = given.get("--login-url", "")
    if crm == "salesforce" and kind != "bearer":
        login = _url("--login-url", login or SALESFORCE_LOGIN_URL)
    base = (base_url or "").strip() or login  # Salesforce OAuth: the instance URL comes later
    if not base:
        raise UserError("--base-url must be given: the CRM's REST base URL")
    base = _url("--base-url", base)
    if kind == "jwt":
        load_private_key(given["--private-key"])
    secrets = _secrets(kind, given)
    redact.remember(secrets.values())  # masked in this process's logs from now on
    checked = limit_model(
        crm, rate_limits, connection_settings.validate(crm, parse_settings(settings))
    )
    return Connection(
        id=id,
        tenant=tenant,
        crm=crm,
        account=account,
        base_url=base,
        token=secrets.get("token", ""),
        windows=crm_limits.windows_of(crm, checked)
        or tuple(
            RateWindow(w["limit"], w["window_ms"]) for w in rate_limits_json(rate_limits, crm)
        ),
        settings=checked,
        auth=Auth(
            kind=kind,
            client_id=given.get("--client-id", ""),
            username=given.get("--username", ""),
            login_url=login,
            rev=pysecrets.token_hex(8),  # new credentials
        ),
        secrets=secrets,
    )


def limit_model(
    crm: str, rate_limits: Sequence[str], settings: dict[str, Any], *, new: bool = True
) -> dict[str, Any]:
    """The settings with the limit model chosen: a ``new`` connection given no
    ``--rate-limit`` gets the CRM's own; without ``limit_model`` a connection holds
    the windows model (so connections stored before it existed keep theirs)."""
    model = settings.get("limit_model")
    if model is None and new and not rate_limits:
        model = "crm"
        settings = {**settings, "limit_model": model}
    if model == "crm" and rate_limits:
        raise UserError(
            "--rate-limit applies to --settings limit_model=windows; the CRM model "
            "(limit_model=crm) takes its limits from tier, daily_limit and concurrency"
        )
    return settings


def _credential_flags(crm: str, kind: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(flags an auth kind needs, flags it takes) for a CRM."""
    if kind == "bearer":
        return ("--token",), ("--token",)
    if kind == "jwt":
        if crm != "salesforce":
            raise UserError("--auth jwt is Salesforce's JWT bearer flow; HubSpot has none")
        needed = ("--client-id", "--username", "--private-key")
        return needed, (*needed, "--login-url")
    needed = ("--client-id", "--client-secret", "--refresh-token")
    return needed, (*needed, "--login-url") if crm == "salesforce" else needed


def _url(flag: str, value: str) -> str:
    """A CRM's URL: http(s), a host, no credentials (they would be stored and shown
    in clear: the credentials go in their own flags, sealed at rest)."""
    shown = redact.text(value.strip())[:200]
    try:
        parts = urlsplit(value.strip())
        parts.port  # noqa: B018 - raises ValueError on a port that is not a number
    except ValueError:
        raise UserError(f"{flag} {shown!r} is not a valid URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UserError(f"{flag} {shown!r} must be an http:// or https:// URL")
    if parts.username is not None or parts.password is not None:
        raise UserError(
            f"{flag} must not carry credentials (user:password@host): give them with "
            "--token (or --auth and its flags), which are stored encrypted"
        )
    return value.strip().rstrip("/")


def _secrets(kind: str, given: Mapping[str, str]) -> dict[str, str]:
    if kind == "bearer":
        return {"token": given["--token"]}
    if kind == "jwt":
        return {"private_key": given["--private-key"]}
    return {"client_secret": given["--client-secret"], "refresh_token": given["--refresh-token"]}


@dataclass(frozen=True)
class Changes:
    """What ``connections update`` changes; None (or empty): as it is."""

    account: str | None = None
    base_url: str | None = None
    auth: str | None = None  # another kind: its credentials are given anew
    token: str | None = None
    client_id: str | None = None
    client_secret: str | None = None
    refresh_token: str | None = None
    username: str | None = None
    private_key: str | None = None
    login_url: str | None = None
    rate_limits: Sequence[str] = ()
    settings: Sequence[str] = ()
    unset: Sequence[str] = ()

    @property
    def credentials(self) -> bool:
        creds = (self.auth, self.token, self.client_id, self.client_secret, self.refresh_token)
        return any(v is not None for v in (*creds, self.username, self.private_key, self.login_url))


def apply(cur: Connection, ch: Changes) -> Connection:
    """``cur`` with ``ch`` applied, validated like ``connections add``: settings
    given are checked and merged over the stored ones (``unset`` removes keys),
    rate limits given replace all of them, credentials given replace theirs (a
    kind given anew needs all of its own). Unchanged credentials keep their
    ``rev``, so the token the workers share stays valid."""
    kind = (ch.auth or cur.auth.kind).strip().lower()
    same = kind == cur.auth.kind

    def old(value: str | None, current: str) -> str:
        return value if value is not None else (current if same else "")

    s = cur.secrets
    base_url = cur.base_url if ch.base_url is None else ch.base_url
    spec = parse_connection(
        id=cur.id,
        crm=cur.crm,
        account=cur.account if ch.account is None else ch.account,
        base_url=base_url,
        tenant=cur.tenant,
        rate_limits=ch.rate_limits,
        auth=kind,
        token=old(ch.token, s.get("token", "")),
        client_id=old(ch.client_id, cur.auth.client_id),
        client_secret=old(ch.client_secret, s.get("client_secret", "")),
        refresh_token=old(ch.refresh_token, s.get("refresh_token", "")),
        username=old(ch.username, cur.auth.username),
        private_key=old(ch.private_key, s.get("private_key", "")),
        login_url=old(ch.login_url, cur.auth.login_url),
    )
    settings = dict(cur.settings)
    for key in ch.unset:
        if key not in settings:
            raise UserError(f"--unset {key}: connection {cur.id!r} has no setting {key!r}")
        del settings[key]
    given = connection_settings.validate(cur.crm, parse_settings(ch.settings))
    settings.update(given)
    if ch.rate_limits and "limit_model" not in given:
        settings.pop("limit_model", None)  # windows given: the windows model
    settings = limit_model(cur.crm, ch.rate_limits, settings, new=False)
    windows = crm_limits.windows_of(cur.crm, settings)
    if not windows and not ch.rate_limits:
        # Kept, unless they were the CRM model's: then the CRM's default windows.
        was_crm = cur.crm_spec is not None
        windows = spec.windows if was_crm else cur.windows
        if was_crm:
            windows = tuple(
                RateWindow(w["limit"], w["window_ms"]) for w in rate_limits_json((), cur.crm)
            )
    spec = replace(spec, settings=settings, windows=windows or spec.windows)
    if (replace(spec.auth, rev=""), spec.secrets) == (replace(cur.auth, rev=""), cur.secrets):
        spec = replace(spec, auth=cur.auth)  # the same credentials: the same rev
    return replace(spec, paused_reason=cur.paused_reason)


def public_view(row: Mapping[str, Any]) -> dict[str, Any]:
    """A connection row as shown to users: token hint only, times as ISO strings."""
    created = row.get("created_at")
    return {
        "id": row["id"],
        "tenant": row["tenant"],
        "crm": row["crm"],
        "account": row["account"],
        "base_url": row["base_url"],
        "auth": Auth.from_json(row["auth"]).kind,
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
            keys.seal(spec.id, spec.secrets),
            spec.token_hint,
            spec.rate_limits,
            spec.settings,
            spec.auth.to_json(),
        )
    except asyncpg.UniqueViolationError:
        raise UserError(f"connection {spec.id!r} already exists") from None


async def load(
    pg: db.Executor, connection_id: str, keys: Keyring, *, lock: bool = False
) -> Connection:
    """One connection with its credentials opened (``lock``: the row stays locked
    until the caller's transaction ends)."""
    query = "connections_get_for_update" if lock else "connections_get"
    row = await pg.fetchrow(db.q(query), connection_id)
    if row is None:
        raise _unknown(connection_id)
    return Connection.from_row(row, keys)


async def store(pg: db.Executor, spec: Connection, keys: Keyring, *, resume: bool = False) -> None:
    """Write a changed connection (ledger and dead letters stay); workers reload it.
    ``resume``: clear a pause its credentials caused."""
    paused = spec.paused_reason
    if resume and is_auth_pause(paused):
        paused = None
    await pg.execute(
        db.q("connections_update"),
        spec.id,
        spec.account,
        spec.base_url,
        keys.seal(spec.id, spec.secrets),
        spec.token_hint,
        spec.rate_limits,
        spec.settings,
        spec.auth.to_json(),
        paused,
    )


async def store_rotated(
    pool: asyncpg.Pool[Any], connection_id: str, keys: Keyring, rev: str, refresh_token: str
) -> bool:
    """Keep the refresh token a token endpoint rotated, sealed, unless an operator
    changed the credentials meanwhile (another ``rev``); whether it was kept."""
    async with pool.acquire() as pg, pg.transaction():
        row = await pg.fetchrow(db.q("connections_get_for_update"), connection_id)
        if row is None:
            return False
        if Auth.from_json(row["auth"]).rev != rev:
            return False
        secrets = keys.open(connection_id, row["secrets"])
        secrets["refresh_token"] = refresh_token
        await pg.execute(
            db.q("connections_store_rotated"),
            connection_id,
            keys.seal(connection_id, secrets),
            redact.mask(refresh_token),
        )
    return True


async def exists(pg: db.Executor, connection_id: str) -> bool:
    return bool(await pg.fetchval(db.q("connections_exists"), connection_id))


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
        [redact.mask(secrets.get("token") or secrets.get("refresh_token")) for _, secrets in items],
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
