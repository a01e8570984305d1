"""Planning a claim: each claimed contact's decision, grouped into CRM requests.

Pure: no I/O. The sync rules (``crmsync.rules.decide``) decide per contact on
its current row and its ledger row, so the order in which changes were captured
never matters and a burst of edits coalesced into one queued id is one sync of
the latest state. What needs no request is settled here: a contact already in
sync (noop) is acknowledged; one a rule skips is recorded as ``skipped`` with
the rule's name and acknowledged. The rest become requests of up to ``batch``
records, upserts (creates and updates) first, deletes apart: one request
carries one kind, as the adapters' batch endpoints do.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field, replace

from crmsync.crm.base import Op
from crmsync.model import Claimed, LedgerRow, LedgerWrite
from crmsync.rules import decide, maybe_in_crm


@dataclass(frozen=True, slots=True)
class Request:
    """One CRM request: its ops (all upserts or all deletes) and what the claim
    read of each op's contact."""

    ops: list[Op]
    items: dict[str, Claimed]  # by contact id

    @property
    def contact_ids(self) -> list[str]:
        return [op.contact_id for op in self.ops]


@dataclass(frozen=True, slots=True)
class Plan:
    requests: list[Request]  # in the order they should be sent
    acks: list[str] = field(default_factory=list)  # settled without a request
    skipped: list[LedgerWrite] = field(default_factory=list)  # their ledger rows


def outcome_unknown(it: Claimed) -> LedgerRow | None:
    """The ledger row to decide on for a contact whose last send's outcome was
    never recorded (its lease expired): unless the ledger knows the record's id
    or is up to date, the CRM may hold a record of it that only our id finds,
    as after a create whose answer was lost."""
    row = it.ledger
    if row is not None and row.external_id is not None:
        return row
    if (
        row is not None
        and it.contact is not None
        and row.status in ("synced", "skipped")
        and row.synced_version is not None
        and row.synced_version >= it.contact.version
    ):
        return row
    version = row.synced_version if row is not None else None
    return LedgerRow(None, version, "retrying", row.attempts if row is not None else 0)


def plan_claim(crm: str, items: list[Claimed], batch: int, unknown: Collection[str] = ()) -> Plan:
    """Decide per contact; group what must be sent into requests of ``batch``.
    ``unknown``: ids whose last send's outcome was never recorded."""
    upserts: list[Op] = []
    deletes: list[Op] = []
    by_id: dict[str, Claimed] = {}
    acks: list[str] = []
    skipped: list[LedgerWrite] = []
    for it in items:
        if it.contact_id in unknown:
            it = replace(it, ledger=outcome_unknown(it))
        d = decide(crm, it.contact, it.ledger)
        by_id[it.contact_id] = it
        if d.action == "noop":
            acks.append(it.contact_id)
        elif d.action == "skip":
            assert it.contact is not None  # a rule only skips an existing contact
            skipped.append(
                LedgerWrite(it.contact_id, None, it.contact.version, "skipped", d.rule, 0, None)
            )
            acks.append(it.contact_id)
        elif d.action == "delete":
            ext = it.ledger.external_id if it.ledger else None
            deletes.append(Op("delete", it.contact_id, None, ext))
        else:
            assert it.contact is not None  # create and update send the current row
            ext = it.ledger.external_id if it.ledger else None
            maybe = d.action == "create" and maybe_in_crm(it.ledger)
            upserts.append(Op(d.action, it.contact_id, it.contact, ext, maybe))
    requests: list[Request] = []
    for ops in (upserts, deletes):
        for i in range(0, len(ops), batch):
            chunk = ops[i : i + batch]
            requests.append(Request(chunk, {op.contact_id: by_id[op.contact_id] for op in chunk}))
    return Plan(requests, acks, skipped)
