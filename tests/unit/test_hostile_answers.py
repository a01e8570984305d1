"""Whatever a CRM answers, the adapters' parsing gives a result or a CRM error:
never another exception, and a 2xx counts as success only when its body confirms
the record (an id of the right type; the record named). The table holds the
answers seen from misbehaving CRMs; the property test throws every JSON shape
and status at every parse function."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict

from crmsync import redact
from crmsync.crm import hubspot, salesforce
from crmsync.crm.answer import NotJson, clean, excerpt, loads, record_id
from crmsync.crm.base import Op, SendResult
from crmsync.errors import CrmError, Malformed, Permanent, RateLimited, Retryable
from crmsync.model import Contact

H: CIMultiDict[str] = CIMultiDict()


def contact(cid: str) -> Contact:
    return Contact(cid, "default", f"{cid}@example.com", "Ada", "Lovelace", "Acme", "active", 1)


def create(cid: str) -> Op:
    return Op("create", cid, contact(cid), None)


def delete(cid: str, ext: str | None) -> Op:
    return Op("delete", cid, None, ext)


Parse = Callable[[int, Any], SendResult]

PARSERS: dict[str, Parse] = {
    "salesforce upsert": lambda s, b: salesforce.parse_upsert(create("c1"), s, H, b),
    "salesforce delete": lambda s, b: salesforce.parse_delete(delete("c1", "003A"), s, H, b),
    "salesforce collection": lambda s, b: salesforce.parse_collection(
        [create("c1"), create("c2")], s, H, b, deleting=False
    ),
    "salesforce collection delete": lambda s, b: salesforce.parse_collection(
        [delete("c1", "003A"), delete("c2", "003B")], s, H, b, deleting=True
    ),
    "hubspot single": lambda s, b: hubspot.parse_single(create("c1"), s, H, b),
    "hubspot batch": lambda s, b: hubspot.parse_batch_upsert([create("c1"), create("c2")], s, H, b),
    "hubspot delete": lambda s, b: hubspot.parse_delete(delete("c1", "51"), s, H, b),
    "hubspot archive": lambda s, b: hubspot.parse_archive(
        [delete("c1", "51"), delete("c2", "52")], s, H, b
    ),
}


RECORDS = {name: 2 if ("collection" in name or "batch" in name or "archive" in name) else 1
           for name in PARSERS}  # fmt: skip


def outcome(parse: Parse, status: int, body: Any) -> SendResult | CrmError:
    try:
        return parse(status, body)
    except CrmError as exc:
        return exc


# (name, parser, status, body, what each record gets: "ok" or an error class)
HOSTILE = [
    ("sf 201 id as number", "salesforce upsert", 201, {"id": 12345, "success": True}, Malformed),
    ("sf 201 id as object", "salesforce upsert", 201, {"id": {"x": 1}}, Malformed),
    ("sf 201 empty id", "salesforce upsert", 201, {"id": ""}, Malformed),
    ("sf 200 success false", "salesforce upsert", 200, {"id": "003A", "success": False}, Malformed),
    ("sf 201 not JSON", "salesforce upsert", 201, NotJson("<html>ok</html>"), Malformed),
    ("sf 201 empty body", "salesforce upsert", 201, None, Malformed),
    ("sf 204 for a create", "salesforce upsert", 204, None, Malformed),
    ("sf 202 accepted", "salesforce upsert", 202, {"id": "003A"}, Malformed),
    ("sf 201 a list", "salesforce upsert", 201, [1, 2, 3], Malformed),
    ("sf 201 fine", "salesforce upsert", 201, {"id": "003A", "success": True}, "ok"),
    ("sf 400 body a string", "salesforce upsert", 400, "boom", Permanent),
    ("sf 500 not JSON", "salesforce upsert", 500, NotJson("<html>"), Retryable),
    ("sf 408", "salesforce upsert", 408, None, Retryable),
    ("sf 404 errors wrong", "salesforce delete", 404, [{"errorCode": 7}], Permanent),
    ("sf collection of ints", "salesforce collection", 200, [1, 2], Malformed),
    ("sf collection short", "salesforce collection", 200, [{"id": "003A", "success": True}],
     Malformed),
    ("sf collection object", "salesforce collection", 200, {"results": []}, Malformed),
    (
        "sf collection ids wrong",
        "salesforce collection",
        200,
        [{"id": 1, "success": True}, {"id": "003B", "success": "yes"}],
        Malformed,
    ),
    (
        "sf collection errors junk",
        "salesforce collection",
        200,
        [{"success": False, "errors": "boom"}, {"success": False, "errors": [None]}],
        Permanent,
    ),
    (
        "sf collection delete names another record",
        "salesforce collection delete",
        200,
        [{"id": "003Z", "success": True}, {"id": "003B", "success": True}],
        (Malformed, "ok"),
    ),
    ("hs 201 id as number", "hubspot single", 201, {"id": 512}, Malformed),
    ("hs 200 without id", "hubspot single", 200, {"properties": {}}, Malformed),
    (
        "hs 200 names another contact",
        "hubspot single",
        200,
        {"id": "512", "properties": {"crmsync_id": "c9"}},
        Malformed,
    ),
    ("hs 200 not JSON", "hubspot single", 200, NotJson("{"), Malformed),
    ("hs 201 fine", "hubspot single", 201, {"id": "512"}, "ok"),
    ("hs batch results ints", "hubspot batch", 200, {"results": [1, 2, 3]}, Malformed),
    ("hs batch errors strings", "hubspot batch", 207, {"errors": ["boom"]}, Malformed),
    ("hs batch one string error", "hubspot batch", 207, {"errors": ["boom"], "results": [
        {"id": "1", "properties": {"crmsync_id": "c1"}}]}, ("ok", Permanent)),
    ("hs batch results not a list", "hubspot batch", 200, {"results": "all good"}, Malformed),
    ("hs batch a list", "hubspot batch", 200, [{"id": "1"}], Malformed),
    ("hs batch empty 200", "hubspot batch", 200, None, Malformed),
    (
        "hs batch id as number",
        "hubspot batch",
        200,
        {"results": [{"id": 1, "properties": {"crmsync_id": "c1"}},
                     {"id": "2", "properties": {"crmsync_id": "c2"}}]},
        (Malformed, "ok"),
    ),
    (
        "hs batch names a stranger",
        "hubspot batch",
        200,
        {"results": [{"id": "1", "properties": {"crmsync_id": "zz"}}]},
        Malformed,
    ),
    (
        "hs batch error context junk",
        "hubspot batch",
        207,
        {"errors": [{"context": {"ids": [{"a": 1}]}, "message": 5}]},
        Malformed,
    ),
    ("hs archive 202", "hubspot archive", 202, None, Malformed),
    ("hs delete 500 junk", "hubspot delete", 500, [1], Retryable),
    ("hs 429 body a list", "hubspot single", 429, [1], RateLimited),
]  # fmt: skip


@pytest.mark.parametrize(
    ("parser", "status", "body", "expected"),
    [pytest.param(p, s, b, e, id=n) for n, p, s, b, e in HOSTILE],
)
def test_a_hostile_answer_is_an_outcome_for_every_record(
    parser: str, status: int, body: Any, expected: Any
) -> None:
    got = outcome(PARSERS[parser], status, body)
    if isinstance(got, CrmError):
        kinds = [type(got).__name__]
        errors = [got]
    else:
        kinds = ["ok" if r.ok else type(r.error).__name__ for r in got.results]
        errors = [r.error for r in got.results if r.error is not None]
    want = list(expected) if isinstance(expected, tuple) else [expected] * len(kinds)
    assert kinds == [w if w == "ok" else w.__name__ for w in want]
    for err in errors:
        if isinstance(err, Malformed):
            assert err.code == "MALFORMED_ANSWER" and err.status == status
            assert len(err.message) < 400, "the body is quoted as a short excerpt"


def test_a_malformed_answer_quotes_a_short_excerpt_with_secrets_masked() -> None:
    body = {"id": 7, "echo": "Authorization: Bearer sk-live-abcdefghijklmnop", "pad": "x" * 10_000}
    err = outcome(PARSERS["salesforce upsert"], 201, body)
    assert isinstance(err, Malformed)
    assert err.message.startswith("Salesforce answered 201 without the record's id: {")
    assert "sk-live-abcdefghijklmnop" not in err.message and "…mnop" in err.message
    assert len(err.message) <= 300


def test_ids_and_messages_are_read_by_type() -> None:
    assert record_id("003A") == "003A"
    for bad in (
        12345,
        1.5,
        True,
        None,
        {"id": "x"},
        ["x"],
        "",
        "a b",
        "x\x00",
        "\ud800",
        "x" * 256,
    ):
        assert record_id(bad) is None
    assert clean("a\x00b\ud800c") == "a\ufffdb\ufffdc"
    assert loads(b"") is None and loads(b"  ") is None
    assert loads(b"<html>") == NotJson("<html>")
    assert excerpt(loads(b"\xff\xfe not utf-8")).startswith("\ufffd")


JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
    | st.sampled_from(["c1", "c2", "003A", "51", "id", "success", "errors", "results"]),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(
        st.sampled_from(
            ["id", "success", "created", "errors", "results", "properties", "crmsync_id",
             "context", "ids", "message", "errorCode", "statusCode", "category", "new",
             "email", "policyName"]
        ) | st.text(max_size=5),
        children,
        max_size=5,
    ),
    max_leaves=12,
)  # fmt: skip
STATUSES = st.sampled_from(
    [200, 201, 202, 204, 207, 301, 400, 401, 403, 404, 408, 409, 429, 500, 503, 999]
)


@settings(max_examples=300, deadline=None)
@given(parser=st.sampled_from(sorted(PARSERS)), status=STATUSES, body=JSON)
def test_any_json_any_status_is_a_result_or_a_crm_error(
    parser: str, status: int, body: Any
) -> None:
    got = outcome(PARSERS[parser], status, body)  # anything but CrmError escapes and fails
    if isinstance(got, CrmError):
        assert isinstance(got.message, str)
        if isinstance(got, RateLimited):
            assert 0 < got.retry_after <= 3600
        return
    assert len(got.results) == RECORDS[parser]
    for r in got.results:
        if r.ok and "delete" not in parser and "archive" not in parser:
            assert isinstance(r.external_id, str) and r.external_id, "a success names its record"
        if not r.ok:
            assert isinstance(r.error, CrmError)


def test_remembered_tokens_are_masked_in_excerpts() -> None:
    redact.remember(["tok-0123456789-secret"])
    try:
        assert "tok-0123456789-secret" not in excerpt({"echo": "tok-0123456789-secret"})
    finally:
        redact.forget_all()
