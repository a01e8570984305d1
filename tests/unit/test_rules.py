"""Sync rules: table-driven over CRM, contact state and ledger state."""

from __future__ import annotations

import dataclasses

import pytest

from crmsync.model import Claimed, Contact, LedgerRow
from crmsync.rules import RULES, Decision, decide, maybe_in_crm, rule_name, rule_table
from crmsync.worker.plan import plan_claim

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
DELETED_BY_OUR_ID = LedgerRow(external_id=None, synced_version=3, status="deleted")
SYNCED_NO_ID = LedgerRow(external_id=None, synced_version=2, status="synced")
DEAD_CREATE = LedgerRow(external_id=None, synced_version=None, status="dead")

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
    # No ledger row for a queued contact: a worker may have died between its send and
    # its ledger write; the delete goes by our id (404 = nothing there: one request).
    (
        "delete without a ledger row",
        "salesforce",
        contact(deleted=True),
        None,
        Decision("delete", "salesforce.delete.always"),
    ),
    (
        "hard delete without a ledger row",
        "hubspot",
        None,
        None,
        Decision("delete", "hubspot.delete.always"),
    ),
    # A 2xx that carried no CRM id: the record is there, found by our id.
    (
        "delete synced without id",
        "hubspot",
        None,
        SYNCED_NO_ID,
        Decision("delete", "hubspot.delete.always"),
    ),
    (
        "delete dead create",
        "hubspot",
        contact(deleted=True),
        DEAD_CREATE,
        Decision("delete", "hubspot.delete.always"),
    ),
    (
        "update synced without id",
        "hubspot",
        contact(),
        SYNCED_NO_ID,
        Decision("create", "hubspot.create.has_company"),
    ),
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
    (
        "delete already deleted by our id",
        "hubspot",
        None,
        DELETED_BY_OUR_ID,
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


# Where the CRM may hold a record whose id the ledger does not know: a create looks
# it up first (HubSpot: a single create is not an upsert), a delete goes by our id.
MAYBE = [
    ("never sent", None, False),
    ("create retrying", RETRYING_CREATE, True),
    ("create dead", DEAD_CREATE, True),
    ("synced without id", SYNCED_NO_ID, True),
    ("synced with id", SYNCED_V2, False),
    ("skipped create", SKIPPED_CREATE_V2, False),
    ("deleted by our id", DELETED_BY_OUR_ID, False),
    ("update retrying", RETRYING_UPDATE, False),
]


@pytest.mark.parametrize(("state", "maybe"), [c[1:] for c in MAYBE], ids=[c[0] for c in MAYBE])
def test_maybe_in_crm(state: LedgerRow | None, maybe: bool) -> None:
    assert maybe_in_crm(state) is maybe


@pytest.mark.parametrize(("state", "maybe"), [c[1:] for c in MAYBE], ids=[c[0] for c in MAYBE])
def test_a_create_that_may_have_reached_the_crm_says_so(
    state: LedgerRow | None, maybe: bool
) -> None:
    plan = plan_claim("hubspot", [Claimed("c1", contact(version=9), state)], 1)
    ops = [op for r in plan.requests for op in r.ops]
    if ops and ops[0].kind == "create":
        assert ops[0].maybe_exists is maybe
    else:
        assert not maybe


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


# A contact whose last send's outcome was never recorded (its lease expired):
# what the plan decides on (worker/plan.py outcome_unknown).
UNKNOWN_CASES = [
    # (contact, ledger, action, looks up by our id)
    (True, None, "create", True),
    (False, None, "delete", False),
    (True, LedgerRow(None, 1, "skipped"), "create", True),  # skipped v1, now v2
    (False, LedgerRow(None, 1, "skipped"), "delete", False),
    (True, LedgerRow("X", 1, "synced"), "update", False),  # the id is known
    (True, LedgerRow(None, 2, "skipped"), "noop", False),  # the ledger is up to date
]


@pytest.mark.parametrize(("live", "ledger", "action", "lookup"), UNKNOWN_CASES)
def test_a_send_whose_outcome_is_unknown_may_have_created_the_record(
    live: bool, ledger: LedgerRow | None, action: str, lookup: bool
) -> None:
    contact = Contact("c1", "default", "a@x.io", "A", "B", "Co", "active", 2) if live else None
    item = Claimed("c1", contact, ledger)
    plan = plan_claim("hubspot", [item], 1, unknown={"c1"})
    ops = [op for r in plan.requests for op in r.ops]
    if action == "noop":
        assert ops == [] and plan.acks == ["c1"]
        return
    assert [op.kind for op in ops] == [action]
    if action == "create":
        assert ops[0].maybe_exists is lookup
    if action == "delete":
        assert ops[0].external_id is None  # by our id
    # Without the mark, a contact with no ledger row is a plain create.
    plain = plan_claim("hubspot", [item], 1)
    plain_ops = [op for r in plain.requests for op in r.ops]
    if live and ledger is None:
        assert plain_ops[0].maybe_exists is False
