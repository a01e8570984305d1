"""The harness's expectations (rules -> CRM state) and the check against mock records."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from crmsync_lab.harness.contacts import Contact, ContactBook, generate, plan_changes
from crmsync_lab.harness.expect import (
    Expectation,
    check_connection,
    expectation,
    fields_of,
    record_view,
)

BASE = Contact("c-1", "ada@acme.example.com", "Ada", "Lovelace", "Acme", "active")
NO_CO = replace(BASE, company=None)
INACTIVE = replace(BASE, status="inactive")


def sf_record(c: Contact, sf_id: str = "003001000000000001") -> dict[str, Any]:
    return {
        "Id": sf_id,
        "Email": c.email,
        "FirstName": c.first_name,
        "LastName": c.last_name,
        "Company__c": c.company,
        "Status__c": c.status,
        "CrmSync_Id__c": c.id,
    }


def hs_record(c: Contact, hs_id: str = "1000000001") -> dict[str, Any]:
    return {
        "id": hs_id,
        "properties": {
            "email": c.email,
            "firstname": c.first_name or "",
            "lastname": c.last_name or "",
            "company": c.company or "",  # HubSpot clears with "", not null
            "crmsync_status": c.status,
            "crmsync_id": c.id,
        },
    }


NO_LAST = replace(BASE, last_name=None)


@pytest.mark.parametrize(
    ("crm", "history", "deleted", "presence", "allowed"),
    [
        # Salesforce: CREATE always, UPDATE active only.
        ("salesforce", [BASE], False, "yes", [BASE]),
        ("salesforce", [NO_CO], False, "yes", [NO_CO]),
        ("salesforce", [INACTIVE], False, "yes", [INACTIVE]),
        ("salesforce", [BASE, INACTIVE], False, "yes", [BASE, INACTIVE]),
        ("salesforce", [INACTIVE, BASE], False, "yes", [BASE]),
        ("salesforce", [BASE], True, "no", []),
        # Salesforce requires LastName: a version without one is never sent.
        ("salesforce", [NO_LAST], False, "no", []),
        ("salesforce", [NO_LAST, BASE], False, "yes", [BASE]),
        ("salesforce", [BASE, NO_LAST], False, "maybe", [BASE]),
        # HubSpot: CREATE with a company only, UPDATE always.
        ("hubspot", [BASE], False, "yes", [BASE]),
        ("hubspot", [NO_CO], False, "no", []),
        ("hubspot", [NO_CO, BASE], False, "yes", [BASE]),
        ("hubspot", [INACTIVE], False, "yes", [INACTIVE]),
        ("hubspot", [BASE, NO_CO], False, "maybe", [NO_CO]),
        ("hubspot", [BASE], True, "no", []),
    ],
)
def test_expectation_follows_the_rules(
    crm: str, history: list[Contact], deleted: bool, presence: str, allowed: list[Contact]
) -> None:
    exp = expectation(crm, history, deleted)
    assert exp.presence == presence
    assert set(exp.allowed) == {fields_of(c) for c in allowed}


def test_expectation_exact_only_with_one_allowed_version() -> None:
    assert Expectation("yes", (fields_of(BASE),)).exact == fields_of(BASE)
    assert Expectation("yes", (fields_of(BASE), fields_of(INACTIVE))).exact is None
    with pytest.raises(ValueError):
        expectation("pipedrive", [BASE], False)


def test_record_view_normalises_empty_and_null() -> None:
    assert record_view("salesforce", sf_record(NO_CO)) == ("c-1", fields_of(NO_CO))
    assert record_view("hubspot", hs_record(NO_CO)) == ("c-1", fields_of(NO_CO))
    assert record_view("hubspot", {"id": "1", "properties": {}})[0] is None


def book_of(*histories: list[Contact], deleted: tuple[str, ...] = ()) -> ContactBook:
    book = ContactBook()
    for h in histories:
        for c in h:
            book.put([c])
    book.delete(deleted)
    return book


def test_check_passes_when_the_crm_matches() -> None:
    other = replace(BASE, id="c-2", email="b@x.example.com")
    gone = replace(BASE, id="c-3", email="c@x.example.com")
    book = book_of([BASE], [replace(NO_CO, id="c-4")], [other], [gone], deleted=("c-3",))
    sf = [sf_record(BASE, "1"), sf_record(replace(NO_CO, id="c-4"), "2"), sf_record(other, "3")]
    check = check_connection("sf", "salesforce", "sf-01", book, sf, {"violations": 0})
    assert check.ok, check.problems()
    assert check.expected == 3
    hs = [hs_record(BASE, "1"), hs_record(other, "3")]  # c-4 has no company: not created
    check = check_connection("hs", "hubspot", "hs-01", book, hs, {"duplicates": 0})
    assert check.ok, check.problems()


def test_check_finds_missing_unexpected_wrong_duplicates_and_violations() -> None:
    other = replace(BASE, id="c-2", email="b@x.example.com")
    book = book_of([BASE], [other], [replace(NO_CO, id="c-3")], deleted=("c-2",))
    records = [
        hs_record(replace(BASE, last_name="Byron"), "1"),  # wrong field
        hs_record(BASE, "9"),  # same contact twice: duplicate
        hs_record(other, "2"),  # deleted contact still there
        hs_record(replace(BASE, id="zz-9"), "3"),  # never written by us
    ]
    check = check_connection("hs", "hubspot", "hs-01", book, records, {"violations": 2})
    assert not check.ok
    assert check.unexpected == ["c-2", "zz-9"]
    assert check.duplicates == 1
    assert check.violations == 2
    # The last record of c-1 wins the comparison: it is the correct one here, so
    # the wrong one counts as the duplicate; make the only copy wrong instead.
    check = check_connection("hs", "hubspot", "hs-01", book, records[:1], None)
    assert [m.contact_id for m in check.wrong] == ["c-1"]
    assert check.wrong[0].diffs == {"last_name": ("Lovelace", "Byron")}
    missing = check_connection("sf", "salesforce", "sf-01", book, [], None)
    assert sorted(missing.missing) == ["c-1", "c-3"]
    text = " ".join(missing.problems())
    assert "2 missing" in text and "c-1" in text


def test_mock_duplicate_count_is_used_when_larger() -> None:
    book = book_of([BASE])
    check = check_connection(
        "sf", "salesforce", "sf-01", book, [sf_record(BASE)], {"duplicates": 3}
    )
    assert check.duplicates == 3 and not check.ok


def test_generated_contacts_are_realistic_and_deterministic() -> None:
    people = generate(1000, seed=1, tenant="t")
    assert people == generate(1000, seed=1, tenant="t")
    assert len({c.id for c in people}) == 1000
    assert len({c.email.lower() for c in people}) == 1000
    no_company = sum(1 for c in people if not c.company) / 1000
    inactive = sum(1 for c in people if c.status == "inactive") / 1000
    assert 0.15 < no_company < 0.25
    assert 0.10 < inactive < 0.20
    assert all(c.tenant == "t" and "@" in c.email for c in people)


def test_plan_changes_edits_and_deletes_without_breaking_uniqueness() -> None:
    people = generate(500, seed=3)
    updated, deleted = plan_changes(people, seed=4)
    assert len(updated) == 100 and len(deleted) == 50
    before = {c.id: c for c in people}
    assert sum(1 for u in updated if u != before[u.id]) >= 95
    for u in updated:
        assert u.email == before[u.id].email  # emails never change
        assert not (before[u.id].company and not u.company)  # a company is never removed
    assert any(not before[u.id].company and u.company for u in updated)
    assert any(before[u.id].status != u.status for u in updated)


def test_book_keeps_history_and_deletions() -> None:
    book = ContactBook()
    book.put([BASE])
    book.put([BASE])  # unchanged: no new version
    book.put([INACTIVE])
    assert list(book.history("c-1")) == [BASE, INACTIVE]
    book.delete(["c-1"])
    assert book.live() == []
    with pytest.raises(KeyError):
        book.delete(["nope"])


def test_records_from_before_crmsync_are_left_alone_only_when_known() -> None:
    book = book_of([BASE])
    hand = {"Id": "2", "Email": "Someone@Example.com", "LastName": "Hand"}  # no crmsync id
    known = check_connection(
        "sf", "salesforce", "sf-01", book, [sf_record(BASE), hand], None, {"someone@example.com"}
    )
    assert known.ok and known.untouched == 1, known.problems()
    unknown = check_connection("sf", "salesforce", "sf-01", book, [sf_record(BASE), hand], None)
    assert unknown.unexpected == ["record without CrmSync_Id__c"]
