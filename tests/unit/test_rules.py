"""Sync rules: table-driven over CRM, contact state and ledger state."""

from __future__ import annotations

import dataclasses

import pytest

from crmsync.model import Contact, LedgerRow
from crmsync.rules import RULES, Decision, decide, rule_name, rule_table

BASE = Contact(
    id="c1",
    tenant="default",
    email="ada@example.com",
    first_name="Ada",
    last_name="Lovelace",
    company="Analytical Engines",
    status="active",
    version=3,
)


def contact(**changes: object) -> Contact:
    return dataclasses.replace(BASE, **changes)  # type: ignore[arg-type]


SYNCED_V2 = LedgerRow(external_id="X1", synced_version=2, status="synced")
SYNCED_V3 = LedgerRow(external_id="X1", synced_version=3, status="synced")
SKIPPED_CREATE_V3 = LedgerRow(external_id=None, synced_version=3, status="skipped")
SKIPPED_CREATE_V2 = LedgerRow(external_id=None, synced_version=2, status="skipped")
SKIPPED_UPDATE_V2 = LedgerRow(external_id="X1", synced_version=2, status="skipped")
RETRYING_CREATE = LedgerRow(external_id=None, synced_version=None, status="retrying")
RETRYING_UPDATE = LedgerRow(external_id="X1", synced_version=2, status="retrying")
DEAD_UPDATE = LedgerRow(external_id="X1", synced_version=2, status="dead")
DELETED_IN_CRM = LedgerRow(external_id="X1", synced_version=3, status="deleted")

CASES: list[tuple[str, str, Contact | None, LedgerRow | None, Decision]] = [
    # never synced -> create, by the create rule
    (
        "sf create",
        "salesforce",
        contact(status="lead"),
        None,
        Decision("create", "salesforce.create.always"),
    ),
    ("hs create", "hubspot", contact(), None, Decision("create", "hubspot.create.has_company")),
    (
        "hs no company",
        "hubspot",
        contact(company=None),
        None,
        Decision("skip", "hubspot.create.has_company"),
    ),
    (
        "hs blank company",
        "hubspot",
        contact(company="   "),
        None,
        Decision("skip", "hubspot.create.has_company"),
    ),
    (
        "sf create retrying",
        "salesforce",
        contact(),
        RETRYING_CREATE,
        Decision("create", "salesforce.create.always"),
    ),
    # synced earlier -> update, by the update rule
    (
        "sf update active",
        "salesforce",
        contact(),
        SYNCED_V2,
        Decision("update", "salesforce.update.active_only"),
    ),
    (
        "sf update inactive",
        "salesforce",
        contact(status="inactive"),
        SYNCED_V2,
        Decision("skip", "salesforce.update.active_only"),
    ),
    (
        "sf update churned",
        "salesforce",
        contact(status="churned"),
        SYNCED_V2,
        Decision("skip", "salesforce.update.active_only"),
    ),
    (
        "hs update no company",
        "hubspot",
        contact(company=""),
        SYNCED_V2,
        Decision("update", "hubspot.update.always"),
    ),
    (
        "sf update retrying",
        "salesforce",
        contact(),
        RETRYING_UPDATE,
        Decision("update", "salesforce.update.active_only"),
    ),
    (
        "sf update after dead",
        "salesforce",
        contact(),
        DEAD_UPDATE,
        Decision("update", "salesforce.update.active_only"),
    ),
    (
        "sf update after skipped update",
        "salesforce",
        contact(),
        SKIPPED_UPDATE_V2,
        Decision("update", "salesforce.update.active_only"),
    ),
    # this version is already there (or was deliberately skipped)
    ("sf up to date", "salesforce", contact(), SYNCED_V3, Decision("noop", None)),
    ("sf ledger ahead", "salesforce", contact(version=2), SYNCED_V3, Decision("noop", None)),
    (
        "hs skipped same version",
        "hubspot",
        contact(company=None),
        SKIPPED_CREATE_V3,
        Decision("noop", None),
    ),
    # a skipped create is reconsidered when the contact changes
    (
        "hs skipped then company",
        "hubspot",
        contact(),
        SKIPPED_CREATE_V2,
        Decision("create", "hubspot.create.has_company"),
    ),
    # deleted here
    (
        "sf soft delete",
        "salesforce",
        contact(deleted=True, version=4),
        SYNCED_V3,
        Decision("delete", "salesforce.delete.always"),
    ),
    ("hs hard delete", "hubspot", None, SYNCED_V3, Decision("delete", "hubspot.delete.always")),
    (
        "delete inactive",
        "salesforce",
        contact(deleted=True, status="inactive"),
        SYNCED_V2,
        Decision("delete", "salesforce.delete.always"),
    ),
    (
        "delete retrying update",
        "salesforce",
        None,
        RETRYING_UPDATE,
        Decision("delete", "salesforce.delete.always"),
    ),
    ("delete never synced", "salesforce", contact(deleted=True), None, Decision("noop", None)),
    ("delete skipped create", "hubspot", None, SKIPPED_CREATE_V2, Decision("noop", None)),
    # A create that timed out may have reached the CRM: delete by our id to be sure.
    (
        "delete retrying create",
        "salesforce",
        None,
        RETRYING_CREATE,
        Decision("delete", "salesforce.delete.always"),
    ),
    (
        "delete already deleted",
        "salesforce",
        contact(deleted=True),
        DELETED_IN_CRM,
        Decision("noop", None),
    ),
    # deleted in the CRM, revived here -> created again
    (
        "revived",
        "salesforce",
        contact(version=5),
        DELETED_IN_CRM,
        Decision("create", "salesforce.create.always"),
    ),
    (
        "revived hs no company",
        "hubspot",
        contact(version=5, company=None),
        DELETED_IN_CRM,
        Decision("skip", "hubspot.create.has_company"),
    ),
]


@pytest.mark.parametrize(
    ("crm", "row", "state", "expected"),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_decide(crm: str, row: Contact | None, state: LedgerRow | None, expected: Decision) -> None:
    assert decide(crm, row, state) == expected


def test_unknown_crm_is_named() -> None:
    with pytest.raises(ValueError, match="'pipedrive'"):
        decide("pipedrive", BASE, None)
    with pytest.raises(ValueError, match="'merge'"):
        rule_name("salesforce", "merge")


def test_rule_table_lists_every_rule_once() -> None:
    table = rule_table()
    assert ("salesforce", "create", "always") in table
    assert ("salesforce", "update", "active_only") in table
    assert ("hubspot", "create", "has_company") in table
    assert ("hubspot", "update", "always") in table
    assert {(crm, op) for crm, op, _ in table} == {
        (crm, op) for crm in RULES for op in ("create", "update", "delete")
    }
    assert all(pred == "always" for _, op, pred in table if op == "delete")
