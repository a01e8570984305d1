"""API keys with a scope: who may do what, on which tenant.

A key is ``crmsync_<id>_<secret>`` (id: 12 hex characters, secret: 256 random
bits). It is shown once, when created; PostgreSQL keeps only its SHA-256, found
by the id the key carries and compared in constant time. ``CRMSYNC_API_KEYS``
lists bootstrap admin keys that live only in the environment.

Roles: ``admin`` acts on every tenant and alone manages connections and keys;
``writer`` reads and writes its tenant's contacts and dead letters; ``reader``
only reads its tenant's contacts, connections, status and dead letters.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from crmsync import clock, db
from crmsync.contacts import ID_RULE, is_id
from crmsync.errors import UserError

Role = Literal["admin", "writer", "reader"]
ROLES: tuple[Role, ...] = ("reader", "writer", "admin")  # each may do what the previous may
_PREFIX = "crmsync"
_ID_HEX = 12


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a request acts as: the key's id, role and tenant (None: admin, every tenant)."""

    key_id: str
    role: Role
    tenant: str | None

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    def may(self, role: Role) -> bool:
        """True when this key's role includes ``role``."""
        return ROLES.index(self.role) >= ROLES.index(role)


def _hash(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def key_id_of(key: str) -> str | None:
    """The id a well-formed key carries, else None (no database lookup needed)."""
    prefix, _, rest = key.partition("_")
    kid, _, secret = rest.partition("_")
    if prefix != _PREFIX or len(kid) != _ID_HEX or not secret:
        return None
    try:
        int(kid, 16)
    except ValueError:
        return None
    return kid


def check_scope(role: str, tenant: str | None) -> tuple[Role, str | None]:
    """Validate the flags of ``keys create``; each problem names its flag."""
    if role not in ROLES:
        raise UserError(f"--role {role!r} must be one of writer, reader (or --admin)")
    if role == "admin":
        if tenant is not None:
            raise UserError("--admin keys act on every tenant: leave out --tenant")
        return "admin", None
    if tenant is None:
        raise UserError("--tenant is required for a writer or reader key (or give --admin)")
    if not is_id(tenant):
        raise UserError(f"--tenant {tenant!r} must be {ID_RULE}")
    return ("writer" if role == "writer" else "reader"), tenant


async def create(
    pg: db.Executor, *, role: str, tenant: str | None, name: str | None = None
) -> tuple[dict[str, Any], str]:
    """A new key: (its public row, the key itself, to show once and never again)."""
    checked_role, checked_tenant = check_scope(role, tenant)
    kid = secrets.token_hex(_ID_HEX // 2)
    key = f"{_PREFIX}_{kid}_{secrets.token_urlsafe(32)}"
    row = await pg.fetchrow(
        db.q("apikeys_create"), kid, checked_tenant, checked_role, _hash(key), name
    )
    assert row is not None
    return public_view(row), key


def public_view(row: Mapping[str, Any]) -> dict[str, Any]:
    """A key as listed: never its secret or hash."""

    def iso(name: str) -> str | None:
        v = row[name]
        return v.isoformat() if v is not None else None

    return {
        "id": row["id"],
        "prefix": f"{_PREFIX}_{row['id']}_…",
        "tenant": row["tenant"],
        "role": row["role"],
        "name": row["name"],
        "created_at": iso("created_at"),
        "revoked_at": iso("revoked_at"),
        "last_used_at": iso("last_used_at"),
    }


async def list_keys(pg: db.Executor, *, tenant: str | None = None) -> list[dict[str, Any]]:
    return [public_view(r) for r in await pg.fetch(db.q("apikeys_list"), tenant)]


async def revoke(pg: db.Executor, key_id: str) -> dict[str, Any]:
    """Revoke a key for good (the API stops accepting it within its key cache time)."""
    row = await pg.fetchrow(db.q("apikeys_revoke"), key_id)
    if row is None:
        raise UserError(f"no API key {key_id!r}; `crmsync keys list` shows the existing ones")
    return public_view(row)


class KeyVerifier:
    """Turns a presented key into a Principal: bootstrap keys from the environment,
    else a key row in PostgreSQL. Verified keys are trusted for ``ttl`` seconds
    (a revoke takes effect within that time); unknown keys are never cached, so
    a new key works at once."""

    def __init__(self, bootstrap: Iterable[str], *, ttl: float, now: Any = clock.monotonic) -> None:
        self.bootstrap = tuple(k.encode() for k in bootstrap)
        self.ttl = ttl
        self.now = now
        self._cache: dict[bytes, tuple[float, Principal]] = {}

    def _bootstrap(self, key: str) -> bool:
        presented = key.encode()
        # Compare against every key so timing does not tell which one matched.
        return sum(hmac.compare_digest(presented, k) for k in self.bootstrap) > 0

    async def verify(self, pg: db.Executor, key: str) -> Principal | None:
        if not key:
            return None
        if self._bootstrap(key):
            return Principal("env", "admin", None)
        kid = key_id_of(key)
        if kid is None:
            return None
        digest = _hash(key)
        now = self.now()
        hit = self._cache.get(digest)
        if hit is not None and hit[0] > now:
            return hit[1]
        row = await pg.fetchrow(db.q("apikeys_get_live"), kid)  # None when revoked
        if row is None or not hmac.compare_digest(bytes(row["hash"]), digest):
            self._cache.pop(digest, None)
            return None
        await pg.execute(db.q("apikeys_mark_used"), kid)
        principal = Principal(row["id"], row["role"], row["tenant"])
        if self.ttl > 0:
            if len(self._cache) > 10_000:  # bounded: drop what expired
                self._cache = {d: v for d, v in self._cache.items() if v[0] > now}
            self._cache[digest] = (now + self.ttl, principal)
        return principal
