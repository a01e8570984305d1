from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from crmsync.contacts import (
    MAX_BATCH,
    BatchIn,
    ContactIn,
    ContactWithId,
    check_row,
    columns,
    duplicate_ids,
    email_problem,
)


@pytest.mark.parametrize(
    "email",
    ["a@example.com", "first.last+tag@sub.example.co.uk", "o'neil@x.io", "UPPER@EXAMPLE.COM"],
)
def test_valid_emails(email: str) -> None:
    assert email_problem(email) is None


@pytest.mark.parametrize(
    "email",
    [
        "",
        "plain",
        "@example.com",
        "a@",
        "a@b",
        "a b@example.com",
        "a@exa mple.com",
        "a..b@example.com",
        ".a@example.com",
        "a@-example.com",
        "a@example.123",
        "a@@example.com",
        "x" * 65 + "@example.com",
        "a@" + "b" * 250 + ".com",
    ],
)
def test_invalid_emails(email: str) -> None:
    assert email_problem(email) is not None


def _loc_of(raw: dict[str, Any]) -> list[str]:
    result = check_row(raw)
    assert isinstance(result, list), f"{raw} should be rejected"
    return [field for field, _ in result]


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ({"id": "", "email": "a@x.io"}, "id"),
        ({"id": "a b", "email": "a@x.io"}, "id"),
        ({"id": "x" * 65, "email": "a@x.io"}, "id"),
        ({"id": "a/b", "email": "a@x.io"}, "id"),
        ({"id": "a", "email": "nope"}, "email"),
        ({"id": "a"}, "email"),
        ({"id": "a", "email": None}, "email"),
        ({"id": "a", "email": "a@x.io", "first_name": "f" * 101}, "first_name"),
        ({"id": "a", "email": "a@x.io", "last_name": "l" * 101}, "last_name"),
        ({"id": "a", "email": "a@x.io", "company": "c" * 256}, "company"),
        ({"id": "a", "email": "a@x.io", "status": "vip"}, "status"),
        ({"id": "a", "email": "a@x.io", "tenant": "bad tenant"}, "tenant"),
        ({"id": "a", "email": "a@x.io", "phone": "1"}, "phone"),
    ],
)
def test_rejections_name_the_field(raw: dict[str, Any], field: str) -> None:
    assert _loc_of(raw) == [field]


def test_every_bad_field_is_reported() -> None:
    assert sorted(_loc_of({"id": "a b", "email": "x", "status": "?"})) == ["email", "id", "status"]


def test_email_reason_is_readable() -> None:
    result = check_row({"id": "a", "email": "nope"})
    assert result == [("email", "not a valid email address")]


def test_defaults_and_limits_at_the_edge() -> None:
    c = check_row(
        {
            "id": "A-z_0.9:x" + "y" * 55,
            "email": "a@x.io",
            "first_name": "f" * 100,
            "company": "c" * 255,
        }
    )
    assert isinstance(c, ContactWithId)
    # No tenant named: the write's own tenant applies (default when it has none).
    assert (c.status, c.tenant, c.tenant_or_default, c.last_name) == (
        "active",
        None,
        "default",
        None,
    )
    assert c.row()[0] == "A-z_0.9:x" + "y" * 55


@pytest.mark.parametrize("status", ["active", "inactive", "lead", "customer", "churned"])
def test_known_statuses(status: str) -> None:
    assert ContactIn(email="a@x.io", status=status).status == status  # type: ignore[arg-type]


def test_batch_limit_and_item_locations() -> None:
    ok = [{"id": f"c{i}", "email": f"c{i}@x.io"} for i in range(MAX_BATCH)]
    assert len(BatchIn.model_validate({"contacts": ok}).contacts) == MAX_BATCH
    with pytest.raises(ValidationError) as too_many:
        BatchIn.model_validate({"contacts": [*ok, {"id": "z", "email": "z@x.io"}]})
    assert too_many.value.errors()[0]["loc"] == ("contacts",)
    bad = list(ok)
    bad[3] = {"id": "c3", "email": "broken"}
    with pytest.raises(ValidationError) as one_bad:
        BatchIn.model_validate({"contacts": bad})
    assert [e["loc"] for e in one_bad.value.errors()] == [("contacts", 3, "email")]


def test_columns_and_duplicates() -> None:
    items = [
        ContactWithId(id="a", email="a@x.io", company="A"),
        ContactWithId(id="b", email="b@x.io", status="lead"),
    ]
    assert columns(items) == (
        ["a", "b"],
        ["default", "default"],
        ["a@x.io", "b@x.io"],
        [None, None],
        [None, None],
        ["A", None],
        ["active", "lead"],
        [{}, {}],
    )
    assert duplicate_ids(["a", "b", "a", "c", "b", "a"]) == [(2, "a", 0), (4, "b", 1), (5, "a", 0)]
    assert duplicate_ids(["a", "b"]) == []


@pytest.mark.parametrize(
    ("attributes", "loc_key", "words"),
    [
        ({"Region": "EU"}, "Region", "not a valid key"),
        ({"1region": "EU"}, "1region", "not a valid key"),
        ({"re-gion": "EU"}, "re-gion", "not a valid key"),
        ({"a" * 64: 1}, "a" * 64, "not a valid key"),
        ({"tags": ["a", "b"]}, "tags", "not a list or object"),
        ({"nested": {"a": 1}}, "nested", "not a list or object"),
        ({"note": "x" * 1001}, "note", "at most 1000 characters"),
        ({"note": "a\x00b"}, "note", "NUL"),
        ({f"k{i}": i for i in range(51)}, "", "at most 50"),
        ("region=EU", "", "must be a JSON object"),
    ],
)
def test_bad_attributes_name_the_key(attributes: object, loc_key: str, words: str) -> None:
    with pytest.raises(ValidationError) as exc:
        ContactIn.model_validate({"email": "a@x.io", "attributes": attributes})
    errors = exc.value.errors()
    assert [e["loc"] for e in errors] == [("attributes",)]
    msg = errors[0]["msg"]
    assert msg.startswith(f"attributes.{loc_key} " if loc_key else "attributes ")
    assert words in msg


@pytest.mark.parametrize(
    "attributes",
    [{}, {"region": "EU", "score": 3, "ratio": 0.5, "vip": True, "gone": None}, {"a" * 63: ""}],
)
def test_good_attributes_are_kept(attributes: dict[str, object]) -> None:
    assert ContactIn.model_validate({"email": "a@x.io", "attributes": attributes}).attributes == (
        attributes
    )
