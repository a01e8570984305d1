"""Contacts that already exist in a CRM before crmsync arrives (adoption tests).

Seeds are given as crmsync's contact columns (``email``, ``first_name``,
``last_name``, ``company``, ``phone``, ``title``: the CSV of ``crmsync
contacts import`` works as it is) or as the CRM's own fields, and are loaded
without crmsync's external id, as a CRM that never saw crmsync holds them.
``pick`` chooses a stable share of rows by email, so a test or the demo and
the mock agree on which contacts pre-exist without talking to each other.
"""

from __future__ import annotations

import csv
import hashlib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

GENERIC = {
    "salesforce": {
        "email": "Email",
        "first_name": "FirstName",
        "last_name": "LastName",
        "company": "Company__c",
        "phone": "Phone",
        "title": "Title",
    },
    "hubspot": {
        "email": "email",
        "first_name": "firstname",
        "last_name": "lastname",
        "company": "company",
        "phone": "phone",
        "title": "jobtitle",
    },
}
# crmsync's columns that say nothing about a record made before crmsync.
IGNORED = frozenset({"id", "status", "tenant", "version"})


def native(crm: str, contact: Mapping[str, Any]) -> dict[str, Any]:
    """One seed as the CRM's fields; keys that are not crmsync columns pass as they are."""
    names = GENERIC[crm]
    out: dict[str, Any] = {}
    for key, value in contact.items():
        if key in IGNORED or value in (None, ""):
            continue
        out[names.get(key, key)] = value
    if crm == "salesforce" and not out.get("LastName"):
        # Salesforce requires LastName: a person entered by hand has one.
        local = str(out.get("Email", "unknown")).split("@", 1)[0]
        out["LastName"] = local.replace(".", " ").title() or "Unknown"
    return out


def chosen(email: str, share: float) -> bool:
    """Whether ``email`` is in the ``share`` (0..1) of contacts that pre-exist."""
    digest = hashlib.sha256(email.strip().lower().encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < share


def pick(rows: Iterable[Mapping[str, Any]], share: float) -> list[dict[str, Any]]:
    if not 0.0 <= share <= 1.0:
        raise ValueError("seed share must be between 0 and 1")
    return [dict(r) for r in rows if chosen(str(r.get("email") or r.get("Email") or ""), share)]


def read_csv(path: Path) -> list[dict[str, str]]:
    """The rows of a contacts CSV (header row first; needs an ``email`` column)."""
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
    except OSError as exc:
        raise ValueError(f"cannot read seed file {path} ({exc.strerror or exc})") from None
    if rows and "email" not in rows[0]:
        raise ValueError(f"seed file {path} has no email column in its header")
    return rows
