"""The engine's shapes of a contact and of its ledger row, shared by the sync
rules, the worker and the CRM adapters.

The worker reads a ``Contact`` from ``contacts`` and hands the same object to
the rules (which decide on it) and, inside an ``Op``, to the adapter (which maps
its attributes onto CRM fields). The API validates its own pydantic models;
nothing here is a request or response body.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# A contact's attributes a CRM receives, in the order adapters map them.
CONTACT_ATTRS = ("email", "first_name", "last_name", "company", "status")


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

    def fields(self) -> dict[str, Any]:
        """What a CRM receives of it (the dead-letter payload of an upsert)."""
        return {a: getattr(self, a) for a in CONTACT_ATTRS}


@dataclass(frozen=True, slots=True)
class LedgerRow:
    """What one connection holds of a contact (a ``sync_state`` row)."""

    external_id: str | None
    synced_version: int | None
    status: str  # synced | skipped | deleted | retrying | dead
