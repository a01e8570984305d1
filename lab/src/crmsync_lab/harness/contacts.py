"""Realistic, deterministic contacts for the demo, the acceptance tests and the benchmark.

No network and no Faker: small built-in lists and a seeded ``random.Random``,
so the same seed gives the same people. A ``ContactBook`` remembers every
version each contact went through (the CRM may legitimately hold an older one,
e.g. Salesforce never receives an update of a contact that is not active) and
which ones were deleted: it is the input of ``expect.py``.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

FIRST_NAMES = (
    "Ada", "Alan", "Amara", "Anna", "Arjun", "Beatriz", "Carlos", "Chen", "Chloe", "Daniel",
    "Diego", "Elena", "Emeka", "Emma", "Farah", "Felix", "Grace", "Hana", "Hugo", "Ines",
    "Isaac", "Jamal", "Jana", "Javier", "Kai", "Kenji", "Lars", "Leila", "Liam", "Lucia",
    "Maya", "Mateo", "Mei", "Nadia", "Noah", "Olga", "Omar", "Priya", "Rafael", "Rosa",
    "Sam", "Sara", "Sofia", "Tariq", "Tomas", "Uma", "Victor", "Wei", "Yara", "Zoe",
)  # fmt: skip
LAST_NAMES = (
    "Abbott", "Alvarez", "Andersen", "Baker", "Bianchi", "Brown", "Costa", "Dubois", "Eze",
    "Fischer", "Garcia", "Haddad", "Hansen", "Ito", "Jensen", "Kim", "Kowalski", "Lee",
    "Lopez", "Martin", "Mensah", "Meyer", "Moreau", "Nakamura", "Nguyen", "Novak", "Okafor",
    "Olsen", "Patel", "Perez", "Petrov", "Rossi", "Santos", "Schmidt", "Silva", "Singh",
    "Smith", "Suzuki", "Tanaka", "Taylor", "Walker", "Wang", "Weber", "Yilmaz", "Zhang",
)  # fmt: skip
COMPANIES = (
    "Acme Corp", "Apex Logistics", "Blue Harbor", "Brightline Health", "Cedar & Finch",
    "Copperleaf", "Delta Foods", "Evergreen Energy", "Fjord Analytics", "Granite Insurance",
    "Helios Solar", "Ironbridge", "Juniper Labs", "Keystone Retail", "Lumen Media",
    "Maple Freight", "Northwind Traders", "Orbit Telecom", "Pinecrest Bank", "Quartz Systems",
    "Redwood Partners", "Silverline Travel", "Tidewater Marine", "Umbra Security",
    "Vertex Robotics", "Willow Care", "Zenith Software",
)  # fmt: skip
FREE_MAIL = ("gmail.com", "outlook.com", "proton.me", "yahoo.com", "fastmail.com")
# Weights of the non-inactive statuses; "inactive" gets its own share.
OTHER_STATUSES = (("active", 70), ("lead", 15), ("customer", 10), ("churned", 5))


@dataclass(frozen=True, slots=True)
class Contact:
    """One contact as the HTTP API takes it."""

    id: str
    email: str
    first_name: str | None
    last_name: str | None
    company: str | None
    status: str
    tenant: str = "default"

    def to_api(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "email": self.email,
            "first_name": self.first_name,
            "last_name": self.last_name,
            "company": self.company,
            "status": self.status,
            "tenant": self.tenant,
        }


def _domain(company: str) -> str:
    word = "".join(ch for ch in company.lower().split(" ")[0] if ch.isalnum())
    return f"{word}.example.com"


def _status(rng: random.Random, inactive_share: float) -> str:
    if rng.random() < inactive_share:
        return "inactive"
    names = [s for s, _ in OTHER_STATUSES]
    weights = [w for _, w in OTHER_STATUSES]
    return rng.choices(names, weights)[0]


def generate(
    count: int,
    *,
    seed: int = 42,
    tenant: str = "default",
    id_prefix: str = "c",
    no_company_share: float = 0.2,
    inactive_share: float = 0.15,
) -> list[Contact]:
    """``count`` contacts with unique ids and unique emails (CRMs dedupe by email)."""
    rng = random.Random(seed)
    out: list[Contact] = []
    for i in range(count):
        first, last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
        company = None if rng.random() < no_company_share else rng.choice(COMPANIES)
        domain = _domain(company) if company else rng.choice(FREE_MAIL)
        # The index keeps emails unique however often a name repeats.
        email = f"{first}.{last}.{i}@{domain}".lower()
        out.append(
            Contact(
                id=f"{id_prefix}-{i:06d}",
                email=email,
                first_name=first,
                last_name=last,
                company=company,
                status=_status(rng, inactive_share),
                tenant=tenant,
            )
        )
    return out


def mutate(contact: Contact, rng: random.Random) -> Contact:
    """A realistic edit: gain a company, change status, or change name/company.

    A company once set is never removed, so HubSpot's create rule (has a
    company) gives an exact expectation; emails never change, so they stay unique.
    """
    if not contact.company and rng.random() < 0.6:
        return replace(contact, company=rng.choice(COMPANIES))
    roll = rng.random()
    if roll < 0.45:
        statuses = [s for s in ("active", "inactive", "lead", "customer") if s != contact.status]
        return replace(contact, status=rng.choice(statuses))
    if roll < 0.75:
        return replace(contact, last_name=rng.choice(LAST_NAMES) + "-" + rng.choice(LAST_NAMES))
    if contact.company:
        others = [c for c in COMPANIES if c != contact.company]
        return replace(contact, company=rng.choice(others), status="active")
    return replace(contact, first_name=rng.choice(FIRST_NAMES), status="active")


@dataclass
class ContactBook:
    """Every version each contact went through, and which contacts are deleted."""

    versions: dict[str, list[Contact]] = field(default_factory=dict)
    deleted: set[str] = field(default_factory=set)

    def put(self, contacts: Iterable[Contact]) -> None:
        for c in contacts:
            history = self.versions.setdefault(c.id, [])
            if not history or history[-1] != c:
                history.append(c)
            self.deleted.discard(c.id)

    def delete(self, ids: Iterable[str]) -> None:
        for cid in ids:
            if cid not in self.versions:
                raise KeyError(f"cannot delete unknown contact {cid!r}")
            self.deleted.add(cid)

    def final(self, contact_id: str) -> Contact:
        return self.versions[contact_id][-1]

    def history(self, contact_id: str) -> Sequence[Contact]:
        return self.versions[contact_id]

    def live(self) -> list[Contact]:
        return [h[-1] for cid, h in self.versions.items() if cid not in self.deleted]

    def __iter__(self) -> Iterator[str]:
        return iter(self.versions)

    def __len__(self) -> int:
        return len(self.versions)


def plan_changes(
    contacts: Sequence[Contact],
    *,
    seed: int = 7,
    update_share: float = 0.2,
    delete_share: float = 0.1,
) -> tuple[list[Contact], list[str]]:
    """The second wave: edited versions of ~``update_share`` and ids of ~``delete_share``.

    Some contacts are both edited and then deleted, as happens in real life.
    """
    rng = random.Random(seed)
    n_update = round(len(contacts) * update_share)
    n_delete = round(len(contacts) * delete_share)
    updated = [mutate(c, rng) for c in rng.sample(list(contacts), n_update)]
    deleted = [c.id for c in rng.sample(list(contacts), n_delete)]
    return updated, deleted


def chunks(items: Sequence[Contact], size: int) -> Iterator[list[Contact]]:
    for i in range(0, len(items), size):
        yield list(items[i : i + size])
