"""SyncRulesEngine: which change of a contact a CRM should receive, as data.

Sync is state-based: the worker hands ``decide`` the contact's *current* row and
its ledger row for one connection, and the answer depends on nothing else, so
the order in which changes were captured never matters.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal

from crmsync.model import Contact, LedgerRow

Action = Literal["create", "update", "delete", "skip", "noop"]


@dataclass(frozen=True, slots=True)
class Decision:
    action: Action
    rule: str | None  # "<crm>.<operation>.<predicate>"; None for noop


def _always(_: Contact) -> bool:
    return True


def _active_only(c: Contact) -> bool:
    return c.status == "active"


def _has_company(c: Contact) -> bool:
    return bool(c.company and c.company.strip())


PREDICATES: Mapping[str, Callable[[Contact], bool]] = MappingProxyType(
    {"always": _always, "active_only": _active_only, "has_company": _has_company}
)

# The rule table: CRM -> operation -> predicate name. DELETE is always sent, for
# every CRM: a record we created must not outlive its contact.
RULES: Mapping[str, Mapping[str, str]] = MappingProxyType(
    {
        "salesforce": MappingProxyType(
            {"create": "always", "update": "active_only", "delete": "always"}
        ),
        "hubspot": MappingProxyType(
            {"create": "has_company", "update": "always", "delete": "always"}
        ),
    }
)


def rule_name(crm: str, operation: str) -> str:
    try:
        return f"{crm}.{operation}.{RULES[crm][operation]}"
    except KeyError:
        raise ValueError(f"no sync rule for CRM {crm!r} and operation {operation!r}") from None


def rule_table() -> list[tuple[str, str, str]]:
    """(crm, operation, predicate) rows, for `crmsync status` and the README."""
    return [(crm, op, pred) for crm, ops in RULES.items() for op, pred in ops.items()]


def _apply(crm: str, operation: Literal["create", "update"], contact: Contact) -> Decision:
    name = rule_name(crm, operation)
    if PREDICATES[RULES[crm][operation]](contact):
        return Decision(operation, name)
    return Decision("skip", name)


def in_crm(state: LedgerRow | None) -> bool:
    """The CRM holds the contact's record and the ledger knows its id."""
    return state is not None and state.external_id is not None and state.status != "deleted"


# Ledger states in which a send may have reached the CRM without us learning the
# record's id: a create that timed out or lost its answer (retrying, dead), or a
# 2xx that carried no id (synced, from before answers had to name the record).
_MAYBE_SENT = frozenset({"retrying", "dead", "synced"})


def maybe_in_crm(state: LedgerRow | None) -> bool:
    """The CRM may hold a record of the contact whose id the ledger does not know:
    such a record is found by our id (a delete by external id, a lookup before a
    create where a create is not an upsert)."""
    return state is not None and state.external_id is None and state.status in _MAYBE_SENT


def decide(crm: str, contact: Contact | None, state: LedgerRow | None) -> Decision:
    """Create, update, delete, skip (with the rule's name) or do nothing."""
    if crm not in RULES:
        raise ValueError(f"no sync rules for CRM {crm!r}; known: {', '.join(RULES)}")
    if contact is None or contact.deleted:
        # Delete whenever the CRM may hold the record: by its id when the ledger
        # knows it, else by our id (an idempotent delete answered 404 costs one
        # request; a forgotten record costs the user's trust). No ledger row at all
        # for a queued contact counts: a worker may have died after its send
        # reached the CRM and before it wrote the ledger.
        if state is None or in_crm(state) or maybe_in_crm(state):
            return Decision("delete", rule_name(crm, "delete"))
        return Decision("noop", None)
    # This version was already synced, or deliberately skipped.
    if (
        state is not None
        and state.status in ("synced", "skipped")
        and state.synced_version is not None
        and state.synced_version >= contact.version
    ):
        return Decision("noop", None)
    if not in_crm(state):
        # Never created there (or skipped, or deleted there and revived here, or
        # maybe created without us learning the id: see ``maybe_in_crm``).
        return _apply(crm, "create", contact)
    return _apply(crm, "update", contact)
