"""The engine's shapes of a contact and of its ledger row, shared by the sync
rules, the worker and the CRM adapters.

The worker reads a ``Contact`` from ``contacts`` and hands the same object to
the rules (which decide on it) and, inside an ``Op``, to the adapter (which maps
its attributes onto CRM fields). The API validates its own pydantic models;
nothing here is a request or response body.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, NamedTuple

# A contact's attributes a CRM receives, in the order adapters map them.
CONTACT_ATTRS = ("email", "first_name", "last_name", "company", "status")
_NO_ATTRIBUTES: Mapping[str, Any] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class Contact:
    """A contact's current row in ``contacts``."""

    id: str
    tenant: str
    email: str
    first_name: str | None
    last_name: str | None
    company: str | None
    status: str
    version: int
    deleted: bool = False  # soft-deleted (``deleted_at`` set)
    # Custom attributes (``contacts.attributes``): scalars by key, read-only.
    attributes: Mapping[str, Any] = field(default_factory=lambda: _NO_ATTRIBUTES)

    def fields(self) -> dict[str, Any]:
        """The contact's columns (the dead-letter payload of an upsert)."""
        out = {a: getattr(self, a) for a in CONTACT_ATTRS}
        if self.attributes:
            out["attributes"] = dict(self.attributes)
        return out


@dataclass(frozen=True, slots=True)
class LedgerRow:
    """What one connection holds of a contact (a ``sync_state`` row)."""

    external_id: str | None
    synced_version: int | None
    status: str  # synced | skipped | deleted | retrying | dead
    attempts: int = 0  # failed sends of the current change so far


@dataclass(frozen=True, slots=True)
class Claimed:
    """One contact id of a claim, as the worker read it for one connection."""

    contact_id: str
    contact: Contact | None  # None: gone from ``contacts`` (or another tenant's id)
    ledger: LedgerRow | None  # None: never synced to this connection
    committed_ms: float | None = None  # when the contact's current version was committed

    @property
    def attempts(self) -> int:
        """Failed sends of the current change so far. A dead row comes back to the
        queue only with a new change (or a replay): that change starts afresh."""
        if self.ledger is None or self.ledger.status == "dead":
            return 0
        return self.ledger.attempts


class LedgerWrite(NamedTuple):
    """One ``sync_state`` row a claim writes (NULL ids/versions keep the old ones)."""

    contact_id: str
    external_id: str | None
    synced_version: int | None
    status: str
    rule: str | None
    attempts: int
    last_error: str | None


class DeadLetter(NamedTuple):
    """One ``dead_letters`` row: a change the CRM refused for good, or retried out."""

    contact_id: str
    version: int | None
    operation: str
    error_code: str | None
    error: str
    http_status: int | None
    payload: dict[str, Any]
    attempts: int
