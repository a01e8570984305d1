"""The HubSpot CRM v3 API over a mock portal (hubspot.py), as clients call it.

``/crm/v3/objects/contacts``: GET a page (``limit`` <= 100, ``after``,
``properties``), POST create (201; 409 on a taken email or unique value);
``/{id}`` GET / PATCH / DELETE, by id or by a unique ``idProperty``;
``/batch/create|read|update|upsert|archive`` (<= 100 inputs; 200/201, or 207
with ``errors`` whose ``context.ids`` name the inputs; results deliberately
NOT in input order); ``/search`` (``filterGroups`` ORed, filters ANDed: EQ,
NEQ, IN, HAS_PROPERTY, NOT_HAS_PROPERTY; ``limit`` <= 200, ``after``).
``/crm/v3/properties/contacts``: GET all, GET one, POST create. Errors are
HubSpot's ``{"status":"error","message","correlationId","category"}``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from crmsync_lab.mock.common import Answer
from crmsync_lab.mock.hubspot import (
    DEFAULT_PROPERTIES,
    HubSpotPortal,
    batch_error,
    error,
    now_iso,
)

MAX_BATCH = 100
MAX_PAGE = 100
MAX_SEARCH_PAGE = 200
OBJECT_TYPES = ("contacts", "contact", "0-1")
NOT_FOUND = "Object not found.  objectId are usually numeric."


def is_search(method: str, segs: list[str]) -> bool:
    """A search request (its own rate limit): ``POST /crm/v3/objects/contacts/search``."""
    return method == "POST" and len(segs) == 5 and segs[4] == "search"


def _names(raw: Any) -> list[str] | None:
    if raw is None or raw == "":
        return None
    items = raw.split(",") if isinstance(raw, str) else list(raw)
    return [str(n).strip() for n in items if str(n).strip()]


class HubSpotApi:
    def __init__(self, portal: HubSpotPortal) -> None:
        self.portal = portal

    def handle(self, method: str, segs: list[str], query: Mapping[str, str], body: Any) -> Answer:
        """``segs`` is the path after the base URL."""
        if segs and segs[-1] == "":
            segs = segs[:-1]
        if segs[:3] == ["crm", "v3", "properties"] and len(segs) >= 4:
            if segs[3] not in OBJECT_TYPES:
                return Answer(404, error("OBJECT_NOT_FOUND", f"Unknown object type {segs[3]}"))
            return self._properties(method, segs[4:], body)
        if segs[:3] != ["crm", "v3", "objects"] or len(segs) < 4 or segs[3] not in OBJECT_TYPES:
            return Answer(404, error("OBJECT_NOT_FOUND", "Unable to infer object type"))
        rest = segs[4:]
        if not rest:
            if method == "POST":
                return self._create(body)
            if method == "GET":
                return self._page(query)
        elif rest == ["search"] and method == "POST":
            return self._search(body)
        elif len(rest) == 2 and rest[0] == "batch" and method == "POST":
            route = {
                "create": self._batch_create,
                "read": self._batch_read,
                "update": self._batch_update,
                "upsert": self._batch_upsert,
                "archive": self._batch_archive,
            }.get(rest[1])
            if route is not None:
                return route(body)
        elif len(rest) == 1:
            return self._one(method, rest[0], query, body)
        return Answer(404, error("OBJECT_NOT_FOUND", "Resource not found"))

    # -- single records -------------------------------------------------------
    def _create(self, body: Any) -> Answer:
        portal = self.portal
        props = body.get("properties") if isinstance(body, dict) else None
        problem = portal.problem(props, None)
        if problem:
            return Answer(problem[0], error(problem[1], problem[2]))
        assert isinstance(props, dict)
        return Answer(201, portal.obj(portal.write(None, props)), wrote=True)

    def _page(self, query: Mapping[str, str]) -> Answer:
        portal = self.portal
        try:
            limit = int(query.get("limit", "10"))
            after = int(query.get("after", "0") or 0)
        except ValueError:
            return Answer(400, error("VALIDATION_ERROR", "limit and after must be integers"))
        if not 1 <= limit <= MAX_PAGE:
            return Answer(400, error("VALIDATION_ERROR", f"limit must be 1 to {MAX_PAGE}"))
        wanted = _names(query.get("properties")) or list(DEFAULT_PROPERTIES)
        ids = sorted(int(i) for i in portal.records if int(i) > after)
        page = ids[:limit]
        out: dict[str, Any] = {"results": [portal.obj(str(i), wanted) for i in page]}
        if len(ids) > limit:
            nxt = str(page[-1])
            out["paging"] = {"next": {"after": nxt, "link": f"?after={nxt}"}}
        return Answer(200, out)

    def _one(self, method: str, key: str, query: Mapping[str, str], body: Any) -> Answer:
        portal = self.portal
        prop = query.get("idProperty") or None
        bad = portal.id_property_problem(prop)
        if bad:
            return Answer(bad[0], error(bad[1], bad[2]))
        hs_id = portal.find(key, prop)
        if hs_id is None:
            return Answer(404, error("OBJECT_NOT_FOUND", NOT_FOUND, context={"id": [key]}))
        if method == "GET":
            wanted = _names(query.get("properties")) or list(DEFAULT_PROPERTIES)
            return Answer(200, portal.obj(hs_id, wanted))
        if method == "DELETE":
            portal.archive(hs_id)
            return Answer(204, None, wrote=True)
        if method == "PATCH":
            props = body.get("properties") if isinstance(body, dict) else None
            problem = portal.problem(props, hs_id)
            if problem:
                return Answer(problem[0], error(problem[1], problem[2]))
            assert isinstance(props, dict)
            return Answer(200, portal.obj(portal.write(hs_id, props)), wrote=True)
        return Answer(405, error("VALIDATION_ERROR", f"Method {method} not allowed"))

    # -- batch ------------------------------------------------------------------
    @staticmethod
    def _inputs(body: Any) -> list[Any] | Answer:
        inputs = body.get("inputs") if isinstance(body, dict) else None
        if not isinstance(inputs, list) or not inputs:
            return Answer(400, error("VALIDATION_ERROR", "inputs must be a non-empty list"))
        if len(inputs) > MAX_BATCH:
            msg = f"Batch input limit exceeded: {len(inputs)} inputs, at most {MAX_BATCH}"
            return Answer(400, error("VALIDATION_ERROR", msg))
        if not all(isinstance(i, dict) for i in inputs):
            return Answer(400, error("VALIDATION_ERROR", "every input must be an object"))
        return inputs

    def _batch_answer(
        self, started: str, results: list[dict[str, Any]], errors: list[dict[str, Any]], ok: int
    ) -> Answer:
        # HubSpot does not promise input order; neither does the mock.
        self.portal.rng.shuffle(results)
        payload: dict[str, Any] = {
            "status": "COMPLETE",
            "results": results,
            "startedAt": started,
            "completedAt": now_iso(),
        }
        if errors:
            payload["numErrors"] = len(errors)
            payload["errors"] = errors
        return Answer(207 if errors else ok, payload, wrote=bool(results))

    def _batch_create(self, body: Any) -> Answer:
        """All or nothing: one invalid or conflicting input fails the call."""
        portal = self.portal
        inputs = self._inputs(body)
        if isinstance(inputs, Answer):
            return inputs
        emails: set[str] = set()
        for item in inputs:
            props = item.get("properties")
            problem = portal.problem(props, None)
            if problem:
                return Answer(problem[0], error(problem[1], problem[2]))
            email = str(props.get("email") or "").lower()
            if email and email in emails:
                msg = f"Duplicate email {email} in batch input"
                return Answer(400, error("VALIDATION_ERROR", msg))
            emails.add(email)
        started = now_iso()
        results = [portal.obj(portal.write(None, item["properties"])) for item in inputs]
        return self._batch_answer(started, results, [], 201)

    def _batch_read(self, body: Any) -> Answer:
        portal = self.portal
        inputs = self._inputs(body)
        if isinstance(inputs, Answer):
            return inputs
        prop = body.get("idProperty") or None
        bad = portal.id_property_problem(prop)
        if bad:
            return Answer(bad[0], error(bad[1], bad[2]))
        wanted = _names(body.get("properties")) or list(DEFAULT_PROPERTIES)
        started = now_iso()
        results, missing = [], []
        for item in inputs:
            key = str(item.get("id", ""))
            hs_id = portal.find(key, prop)
            if hs_id is None:
                missing.append(key)
            else:
                results.append(portal.obj(hs_id, wanted))
        errors = []
        if missing:
            msg = (
                "Could not get some CONTACT objects, they may be deleted or not exist. "
                "Check that ids are valid."
            )
            errors.append(batch_error("OBJECT_NOT_FOUND", msg, missing))
        return self._batch_answer(started, results, errors, 200)

    def _batch_update(self, body: Any) -> Answer:
        portal = self.portal
        inputs = self._inputs(body)
        if isinstance(inputs, Answer):
            return inputs
        started = now_iso()
        results: list[dict[str, Any]] = []
        errors: list[dict[str, Any]] = []
        for item in inputs:
            key, prop = str(item.get("id", "")), item.get("idProperty") or None
            bad = portal.id_property_problem(prop)
            if bad:
                errors.append(batch_error(bad[1], bad[2], [key]))
                continue
            hs_id = portal.find(key, prop)
            if hs_id is None:
                errors.append(batch_error("OBJECT_NOT_FOUND", NOT_FOUND, [key]))
                continue
            props = item.get("properties")
            problem = portal.problem(props, hs_id)
            if problem:
                errors.append(batch_error(problem[1], problem[2], [key]))
                continue
            results.append(portal.obj(portal.write(hs_id, props)))
        return self._batch_answer(started, results, errors, 200)

    def _batch_upsert(self, body: Any) -> Answer:
        portal = self.portal
        inputs = self._inputs(body)
        if isinstance(inputs, Answer):
            return inputs
        ids = [str(i.get("id")) for i in inputs]
        if len(set(ids)) != len(ids):
            dup = sorted({i for i in ids if ids.count(i) > 1})  # rare: the error path
            msg = f"Duplicate IDs found in batch input: {dup}. IDs must be unique"
            return Answer(400, error("VALIDATION_ERROR", msg))
        started = now_iso()
        results: list[dict[str, Any]] = []
        errors: list[dict[str, Any]] = []
        for item, key in zip(inputs, ids, strict=True):
            prop = item.get("idProperty")
            if not prop or prop == "hs_object_id" or portal.id_property_problem(prop) or not key:
                msg = f"idProperty must name a unique property, not {prop!r}"
                errors.append(batch_error("VALIDATION_ERROR", msg, [key]))
                continue
            props = dict(item.get("properties") or {})
            props[prop] = key
            hs_id = portal.find(key, prop)
            problem = portal.problem(props, hs_id)
            if problem:
                errors.append(batch_error(problem[1], problem[2], [key]))
                continue
            results.append(portal.obj(portal.write(hs_id, props), new=hs_id is None))
        return self._batch_answer(started, results, errors, 200)

    def _batch_archive(self, body: Any) -> Answer:
        inputs = self._inputs(body)
        if isinstance(inputs, Answer):
            return inputs
        wrote = False
        for item in inputs:
            if item.get("id") is not None:
                wrote = self.portal.archive(str(item["id"])) or wrote
        return Answer(204, None, wrote=wrote)

    # -- search -----------------------------------------------------------------
    def _search(self, body: Any) -> Answer:
        portal = self.portal
        if not isinstance(body, dict):
            return Answer(400, error("VALIDATION_ERROR", "the body must be a JSON object"))
        groups = body.get("filterGroups") or []
        if not isinstance(groups, list) or len(groups) > 5:
            return Answer(400, error("VALIDATION_ERROR", "at most 5 filterGroups"))
        tests = []
        for group in groups:
            filters = group.get("filters") if isinstance(group, dict) else None
            if not isinstance(filters, list) or len(filters) > 6:
                msg = "each filterGroup needs a list of at most 6 filters"
                return Answer(400, error("VALIDATION_ERROR", msg))
            for f in filters:
                name = f.get("propertyName") if isinstance(f, dict) else None
                if name not in portal.properties:
                    msg = f"There was a problem with the request: unknown property {name!r}"
                    return Answer(400, error("VALIDATION_ERROR", msg))
                if f.get("operator") not in _OPERATORS:
                    msg = f"Unsupported operator {f.get('operator')!r}"
                    return Answer(400, error("VALIDATION_ERROR", msg))
            tests.append(filters)
        try:
            limit = int(body.get("limit") or 10)
            after = int(body.get("after") or 0)
        except (TypeError, ValueError):
            return Answer(400, error("VALIDATION_ERROR", "limit and after must be integers"))
        if not 1 <= limit <= MAX_SEARCH_PAGE:
            msg = f"limit must be 1 to {MAX_SEARCH_PAGE}"
            return Answer(400, error("VALIDATION_ERROR", msg))
        hits = [
            hs_id
            for hs_id in self._candidates(tests)
            if not tests or any(all(_match(portal.obj(hs_id), f) for f in fs) for fs in tests)
        ]
        hits.sort(key=int)
        wanted = _names(body.get("properties")) or list(DEFAULT_PROPERTIES)
        page = hits[after : after + limit]
        out: dict[str, Any] = {
            "total": len(hits),
            "results": [portal.obj(i, wanted) for i in page],
        }
        if after + limit < len(hits):
            out["paging"] = {"next": {"after": str(after + limit)}}
        return Answer(200, out)

    def _candidates(self, groups: list[list[dict[str, Any]]]) -> list[str]:
        """Every contact, or fewer when each group has an EQ on a unique property."""
        portal = self.portal
        found: set[str] = set()
        for filters in groups:
            eq = next(
                (
                    f
                    for f in filters
                    if f.get("operator") == "EQ" and f.get("propertyName") in portal.unique
                ),
                None,
            )
            if eq is None:
                return list(portal.records)
            hs_id = portal.find(str(eq.get("value", "")), eq["propertyName"])
            if hs_id is not None:
                found.add(hs_id)
        return list(found) if groups else list(portal.records)

    # -- properties -------------------------------------------------------------
    def _properties(self, method: str, rest: list[str], body: Any) -> Answer:
        portal = self.portal
        if not rest:
            if method == "GET":
                return Answer(200, {"results": list(portal.properties.values())})
            if method == "POST":
                return portal.create_property(body)
        elif len(rest) == 1 and method == "GET":
            prop = portal.properties.get(rest[0])
            if prop is None:
                msg = f"Unable to find property {rest[0]} on object type 0-1"
                return Answer(404, error("OBJECT_NOT_FOUND", msg))
            return Answer(200, prop)
        return Answer(404, error("OBJECT_NOT_FOUND", "Resource not found"))


_OPERATORS = ("EQ", "NEQ", "IN", "NOT_IN", "HAS_PROPERTY", "NOT_HAS_PROPERTY")


def _match(obj: dict[str, Any], f: dict[str, Any]) -> bool:
    value = obj["properties"].get(f["propertyName"])
    have: str | None = str(value).lower() if value not in (None, "") else None
    op: str = f["operator"]
    if op == "HAS_PROPERTY":
        return have is not None
    if op == "NOT_HAS_PROPERTY":
        return have is None
    if op in ("IN", "NOT_IN"):
        values = {str(v).lower() for v in f.get("values") or []}
        return (have in values) == (op == "IN")
    want = str(f.get("value", "")).lower()
    return (have == want) == (op == "EQ")
