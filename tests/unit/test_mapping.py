"""The field mapping (crmsync.crm.mapping): sources, transforms, the older
spelling, required fields; and both adapters sending what it says."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

from crmsync.crm import hubspot, salesforce
from crmsync.crm.base import Op
from crmsync.crm.http import WriteWatch
from crmsync.crm.mapping import compile_map, entries, parse_source
from crmsync.model import Contact
from fakes import FakeAdapter


def contact(**kw: Any) -> Contact:
    base: dict[str, Any] = {
        "id": "c1",
        "tenant": "default",
        "email": "Ann@Example.COM",
        "first_name": "Ann",
        "last_name": "Lee",
        "company": "Acme",
        "status": "active",
        "version": 1,
    }
    base.update(kw)
    return Contact(**base)


SF = salesforce.DEFAULT_FIELDS
HS = hubspot.DEFAULT_PROPERTIES
C = contact(attributes={"region": "  emea ", "score": 7, "vip": True, "code": None})

# (defaults, field_map setting, the contact, the values the CRM receives)
VALUES: list[tuple[dict[str, str], Any, Contact, dict[str, Any]]] = [
    (
        SF,
        None,
        C,
        {
            "Email": "Ann@Example.COM",
            "FirstName": "Ann",
            "LastName": "Lee",
            "Company__c": "Acme",
            "Status__c": "active",
        },
    ),
    # the older spelling: contact column -> CRM field, or dropped
    (
        SF,
        {"company": "Account_Name__c", "status": None},
        C,
        {
            "Email": "Ann@Example.COM",
            "FirstName": "Ann",
            "LastName": "Lee",
            "Account_Name__c": "Acme",
        },
    ),
    # CRM field -> source: a transform, an attribute, a constant, a dropped field
    (
        SF,
        {
            "Email": "email|lower",
            "Region__c": "attributes.region|trim|upper",
            "Score__c": "attributes.score",
            "VIP__c": "attributes.vip",
            "Code__c": "attributes.code|lower",
            "Missing__c": "attributes.nope",
            "LeadSource": "=crmsync",
            "Pipe__c": "=a|lower",
            "Status__c": None,
            "Company__c": "",
        },
        C,
        {
            "Email": "ann@example.com",
            "FirstName": "Ann",
            "LastName": "Lee",
            "Region__c": "EMEA",
            "Score__c": 7,
            "VIP__c": True,
            "Code__c": None,
            "Missing__c": None,
            "LeadSource": "crmsync",
            "Pipe__c": "a|lower",
        },
    ),
    # a column sent to two fields, and renamed
    (
        HS,
        {"firstname": "last_name", "nickname": "first_name|upper"},
        C,
        {
            "email": "Ann@Example.COM",
            "firstname": "Lee",
            "lastname": "Lee",
            "company": "Acme",
            "crmsync_status": "active",
            "nickname": "ANN",
        },
    ),
    # HubSpot's email key read as the new spelling: a transform is a source
    (
        HS,
        {"email": "email|lower"},
        C,
        {
            "email": "ann@example.com",
            "firstname": "Ann",
            "lastname": "Lee",
            "company": "Acme",
            "crmsync_status": "active",
        },
    ),
]


@pytest.mark.parametrize(("defaults", "setting", "c", "expected"), VALUES)
def test_mapped_values(
    defaults: dict[str, str], setting: Any, c: Contact, expected: dict[str, Any]
) -> None:
    assert compile_map(defaults, setting).values(c) == expected


@pytest.mark.parametrize(
    ("spec", "kind", "name", "transforms"),
    [
        ("email", "column", "email", ()),
        ("last_name|trim|lower", "column", "last_name", ("trim", "lower")),
        ("attributes.region", "attribute", "region", ()),
        ("attributes.r2_d2 | upper", "attribute", "r2_d2", ("upper",)),
        ("=", "constant", "", ()),
        ("=x|lower", "constant", "x|lower", ()),
    ],
)
def test_sources_parse(spec: str, kind: str, name: str, transforms: tuple[str, ...]) -> None:
    src = parse_source(spec)
    assert (src.kind, src.name, src.transforms) == (kind, name, transforms)


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        ("phone", "reads 'phone', which is not a contact column"),
        ("email|title", "transform 'title'"),
        ("attributes.Region", "attribute 'Region'"),
        ("attributes.", "attribute ''"),
        (3, "must be a contact column"),
    ],
)
def test_bad_sources_say_why(spec: Any, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        parse_source(spec)


def test_an_unreadable_stored_map_falls_back_to_the_defaults() -> None:
    fm = compile_map(SF, {"Region__c": "nonsense"})
    assert list(fm.sources) == list(entries(SF, None))


# (setting, required, the contact, creating, the reason or None)
NO_LAST = (
    "LastName is required by Salesforce and the contact has no last_name; it syncs once it has one"
)
UNMAPPED = "LastName is required by Salesforce and field_map sends nothing to it"
NO_REGION = (
    "Region__c is required by Salesforce and the contact has no attributes.region; "
    "it syncs once it has one"
)
REGION = {"Region__c": "attributes.region"}
REQUIRED: list[tuple[Any, list[str], Contact, bool, str | None]] = [
    (None, [], C, True, None),
    (None, [], contact(last_name=None), True, NO_LAST),
    (None, [], contact(last_name="   "), True, NO_LAST),
    (None, [], contact(last_name=None), False, NO_LAST),
    ({"LastName": "=Unknown"}, [], contact(last_name=None), True, None),
    ({"last_name": None}, [], C, True, UNMAPPED),
    ({"last_name": None}, [], C, False, None),
    (REGION, ["Region__c"], contact(), True, NO_REGION),
    (REGION, ["Region__c"], C, True, None),
]


@pytest.mark.parametrize(("setting", "required", "c", "creating", "reason"), REQUIRED)
def test_required_fields(
    setting: Any, required: list[str], c: Contact, creating: bool, reason: str | None
) -> None:
    fm = compile_map(
        SF, setting, required=required, always_required=("LastName",), crm="Salesforce"
    )
    assert fm.missing(c, creating=creating) == reason


async def test_a_contact_missing_a_required_field_is_skipped_before_any_request() -> None:
    from test_claim import Rig, connection
    from test_claim import contact as claimed

    fm = compile_map(SF, None, always_required=("LastName",), crm="Salesforce")
    r = Rig(connection())
    r.adapter.missing_reason = lambda c: fm.missing(c)
    r.given(claimed("c1", last_name=None), claimed("c2"))
    await r.run()
    assert [op.contact_id for ops in r.adapter.sent for op in ops] == ["c2"]
    assert r.row("c1") == ("skipped", None, 1, 0)
    assert r.ledger.rules[("sf", "c1")] == "mapping.required"
    assert r.ledger.errors[("sf", "c1")] == (
        "LastName is required by Salesforce and the contact has no last_name; "
        "it syncs once it has one"
    )
    assert r.queue.counters["skipped"] == 1
    assert r.queue.counters["requests"] == 1  # c2's only
    # The contact gets its last name: a new version, sent.
    r.given(claimed("c1", 2, last_name="Lee"))
    await r.run()
    row = r.row("c1")
    assert row is not None and (row[0], row[2]) == ("synced", 2)


class Prefetching(FakeAdapter):
    """A fake whose creates look their records up first, as Salesforce's do."""

    def __init__(self) -> None:
        super().__init__()
        self.prefetched: list[list[str]] = []

    def lookups(self, ops: Sequence[Op]) -> list[Op]:
        return [op for op in ops if op.kind == "create"]

    async def prefetch(self, ops: Sequence[Op], watch: WriteWatch | None = None) -> None:
        self.prefetched.append([op.contact_id for op in ops])
        if watch is not None:
            watch.calls += 1
            watch.fire()


async def test_a_claims_creates_share_one_lookup_on_a_permit_of_its_own() -> None:
    from test_claim import Rig, connection
    from test_claim import contact as claimed

    r = Rig(connection(), adapter=Prefetching())
    r.given(claimed("c1"), claimed("c2"), claimed("c3"))
    await r.run()
    assert r.adapter.prefetched == [["c1", "c2", "c3"]]  # type: ignore[attr-defined]
    assert r.queue.counters["requests"] == 4  # three creates and the lookup
    assert r.store.takes == [1], "the lookup took a permit of its own"
    one = Rig(connection(), adapter=Prefetching())
    one.given(claimed("c9"))
    await one.run()
    assert one.adapter.prefetched == []  # type: ignore[attr-defined]
