"""What each CRM must hold after a run, from the sync rules, and the check against it.

Pure: give it the contacts' histories (``ContactBook``), the records a mock
CRM holds (``GET /_control/records/<crm>/<account>``) and the mock's counters,
and it says what is missing, unexpected, wrong, duplicated or over the limit.

The rules (``crmsync.rules``, docs/ARCHITECTURE.md): Salesforce creates always
and updates only active contacts; HubSpot creates only contacts with a
company and updates always; deletes always. Sync is state-based, so edits
between two syncs coalesce: where the rules let the CRM keep an older version,
any version the contact went through is accepted, never anything else.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from crmsync_lab.harness.contacts import Contact, ContactBook

FIELD_NAMES = ("email", "first_name", "last_name", "company", "status")
# Our attribute -> the CRM's field (the adapters' default mappings).
SALESFORCE_FIELDS = {
    "email": "Email",
    "first_name": "FirstName",
    "last_name": "LastName",
    "company": "Company__c",
    "status": "Status__c",
}
SALESFORCE_ID = "CrmSync_Id__c"
HUBSPOT_FIELDS = {
    "email": "email",
    "first_name": "firstname",
    "last_name": "lastname",
    "company": "company",
    "status": "crmsync_status",
}
HUBSPOT_ID = "crmsync_id"

Fields = tuple[str | None, ...]  # values in FIELD_NAMES order; "" and None are both None
Presence = Literal["yes", "no", "maybe"]


def fields_of(contact: Contact) -> Fields:
    return tuple(_norm(getattr(contact, name)) for name in FIELD_NAMES)


def _norm(value: Any) -> str | None:
    return None if value is None or value == "" else str(value)


@dataclass(frozen=True, slots=True)
class Expectation:
    presence: Presence
    allowed: tuple[Fields, ...] = ()  # a present record must equal one of these

    @property
    def exact(self) -> Fields | None:
        return self.allowed[0] if len(self.allowed) == 1 else None


def expectation(crm: str, history: Sequence[Contact], deleted: bool) -> Expectation:
    """What ``crm`` must hold for a contact that went through ``history``."""
    if not history:
        raise ValueError("a contact has at least one version")
    if deleted:
        return Expectation("no")
    final = history[-1]
    if crm == "salesforce":
        # Created whatever the status; an update reaches it only while active.
        if final.status == "active":
            return Expectation("yes", (fields_of(final),))
        return Expectation("yes", _unique(fields_of(c) for c in history))
    if crm == "hubspot":
        # Updated always once it exists; created only with a company.
        if final.company:
            return Expectation("yes", (fields_of(final),))
        if any(c.company for c in history):
            # Created while it had a company, unless that version coalesced away.
            return Expectation("maybe", (fields_of(final),))
        return Expectation("no")
    raise ValueError(f"no expectations for CRM {crm!r}")


def _unique(items: Iterable[Fields]) -> tuple[Fields, ...]:
    return tuple(dict.fromkeys(items))


def record_view(crm: str, record: Mapping[str, Any]) -> tuple[str | None, Fields]:
    """(our contact id, normalised fields) of one record of the mock's records endpoint."""
    if crm == "salesforce":
        props: Mapping[str, Any] = record
        names, id_field = SALESFORCE_FIELDS, SALESFORCE_ID
    elif crm == "hubspot":
        props = record.get("properties") or {}
        names, id_field = HUBSPOT_FIELDS, HUBSPOT_ID
    else:
        raise ValueError(f"unknown CRM {crm!r}")
    return _norm(props.get(id_field)), tuple(_norm(props.get(names[n])) for n in FIELD_NAMES)


@dataclass(frozen=True, slots=True)
class Mismatch:
    contact_id: str
    diffs: dict[str, tuple[str | None, str | None]]  # field -> (expected, actual)

    def describe(self) -> str:
        parts = [f"{k}: expected {e!r}, got {a!r}" for k, (e, a) in self.diffs.items()]
        return f"{self.contact_id} ({'; '.join(parts)})"


@dataclass
class ConnectionCheck:
    connection_id: str
    crm: str
    account: str
    expected: int = 0  # records that must exist
    present: int = 0  # records the CRM holds
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    wrong: list[Mismatch] = field(default_factory=list)
    duplicates: int = 0  # the larger of ours (same contact id) and the mock's count
    violations: int = 0  # requests the mock admitted over the account's limit

    @property
    def ok(self) -> bool:
        return not (
            self.missing or self.unexpected or self.wrong or self.duplicates or self.violations
        )

    def problems(self, show: int = 5) -> list[str]:
        out: list[str] = []

        def listing(what: str, items: Sequence[str]) -> None:
            if items:
                more = f" (+{len(items) - show} more)" if len(items) > show else ""
                out.append(f"{len(items)} {what}: {', '.join(items[:show])}{more}")

        listing("missing", self.missing)
        listing("unexpected", self.unexpected)
        listing("with wrong fields", [m.describe() for m in self.wrong])
        if self.duplicates:
            out.append(f"{self.duplicates} duplicate record(s)")
        if self.violations:
            out.append(f"{self.violations} request(s) over the rate limit")
        return [f"{self.connection_id}: {p}" for p in out]


def check_connection(
    connection_id: str,
    crm: str,
    account: str,
    book: ContactBook,
    records: Sequence[Mapping[str, Any]],
    mock_stats: Mapping[str, Any] | None = None,
) -> ConnectionCheck:
    """Compare one CRM account's records with what the rules say it must hold."""
    check = ConnectionCheck(connection_id, crm, account, present=len(records))
    seen: dict[str, Fields] = {}
    ids: Counter[str] = Counter()
    for rec in records:
        cid, values = record_view(crm, rec)
        if cid is None:
            id_field = SALESFORCE_ID if crm == "salesforce" else HUBSPOT_ID
            check.unexpected.append(f"record without {id_field}")
            continue
        ids[cid] += 1
        seen[cid] = values
    for cid in book:
        exp = expectation(crm, book.history(cid), cid in book.deleted)
        if exp.presence == "yes":
            check.expected += 1
        actual = seen.pop(cid, None)
        if actual is None:
            if exp.presence == "yes":
                check.missing.append(cid)
            continue
        if exp.presence == "no":
            check.unexpected.append(cid)
            continue
        if actual not in exp.allowed:
            want = exp.allowed[-1]
            diffs = {
                name: (w, a) for name, w, a in zip(FIELD_NAMES, want, actual, strict=True) if w != a
            }
            check.wrong.append(Mismatch(cid, diffs))
    check.unexpected.extend(sorted(seen))  # records of contacts we never wrote
    ours = sum(n - 1 for n in ids.values() if n > 1)
    if mock_stats is not None:
        check.duplicates = max(ours, int(mock_stats.get("duplicates", 0)))
        check.violations = int(mock_stats.get("violations", 0))
    else:
        check.duplicates = ours
    return check


@dataclass
class Report:
    connections: list[ConnectionCheck]

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.connections)

    def problems(self) -> list[str]:
        return [p for c in self.connections for p in c.problems()]
