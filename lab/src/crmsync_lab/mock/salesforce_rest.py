"""The Salesforce REST API over a mock org (salesforce.py), as clients call it.

Under ``/services/data``: the version list; ``vXX.X`` resources; ``limits``
(``DailyApiRequests``); ``sobjects`` (global describe); ``sobjects/Contact``
(info, POST create), ``/describe``, ``/{Id}`` (GET with ``?fields=``, PATCH
update -> 204, DELETE -> 204), ``/{field}/{value}`` (GET, PATCH upsert -> 201
created / 200 updated / 300 several matches, DELETE); ``query`` and
``queryAll`` (``?q=`` SOQL subset, soql.py; pages of ``Sforce-Query-Options:
batchSize`` records, 2,000 by default, then ``nextRecordsUrl``); sObject
Collections upsert (<= 200, per-record results in input order, ``allOrNone``),
update by Id and delete. Errors are Salesforce's ``[{"message","errorCode","fields"}]``.
A trailing slash is ignored, as Salesforce does (simple-salesforce sends one).
"""

from __future__ import annotations

import itertools
import re
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

from crmsync_lab.mock import schema, soql
from crmsync_lab.mock.common import Answer
from crmsync_lab.mock.salesforce import (
    Problem,
    Rich,
    SalesforceOrg,
    error,
    record_error,
)

MAX_COLLECTION = 200
VERSION = re.compile(r"^v(\d+\.\d+)$")
VERSIONS = ("58.0", "59.0", "60.0", "61.0", "62.0")
NOT_FOUND = [{"errorCode": "NOT_FOUND", "message": "The requested resource does not exist"}]
ROLLED_BACK = {
    "statusCode": "ALL_OR_NONE_OPERATION_ROLLED_BACK",
    "message": "Record rolled back because not all records were valid and the request was "
    "using AllOrNone header",
    "fields": [],
}
QUERY_BATCH = 2000
MAX_CURSORS = 64
_cursor_ids = itertools.count(1)


def free(method: str, segs: list[str]) -> bool:
    """Requests the allocation does not count (and answers even when it is spent):
    ``GET .../limits``, so a client can always learn where it stands."""
    return method == "GET" and len(segs) >= 4 and segs[3] == "limits" and segs[4:] in ([], [""])


def _json_object(body: Any) -> Answer | None:
    if isinstance(body, dict):
        return None
    return Answer(400, error("JSON_PARSER_ERROR", "The request body is not an object"))


class SalesforceApi:
    """Routes one org's REST requests (``segs``: the path after the instance URL)."""

    def __init__(self, org: SalesforceOrg) -> None:
        self.org = org
        # query locator -> (version, every record of the answer, page size)
        self.cursors: OrderedDict[str, tuple[str, list[dict[str, Any]], int]] = OrderedDict()

    def handle(
        self,
        method: str,
        segs: list[str],
        query: Mapping[str, str],
        body: Any,
        headers: Mapping[str, str],
    ) -> Answer:
        if segs and segs[-1] == "":
            segs = segs[:-1]
        if segs[:2] != ["services", "data"]:
            return Answer(404, NOT_FOUND)
        if len(segs) == 2:
            return Answer(200, versions()) if method == "GET" else Answer(404, NOT_FOUND)
        m = VERSION.match(segs[2])
        if m is None:
            return Answer(404, NOT_FOUND)
        version, rest = segs[2], segs[3:]
        if not rest:
            return Answer(200, _resources(version))
        what = rest[0]
        if what == "limits" and len(rest) == 1 and method == "GET":
            return Answer(200, self._limits())
        if what in ("query", "queryAll") and method == "GET":
            if len(rest) == 2:
                return self._more(rest[1])
            return self._query(version, query.get("q", ""), headers)
        if what == "sobjects":
            if len(rest) == 1 and method == "GET":
                return Answer(200, _global_describe(version))
            if len(rest) >= 2 and rest[1] == "Contact":
                return self._sobject(method, version, rest[2:], query, body)
            if len(rest) >= 2:
                msg = f"The requested resource does not exist: sObject type '{rest[1]}'"
                return Answer(404, error("NOT_FOUND", msg))
        if what == "composite" and len(rest) >= 2 and rest[1] == "sobjects":
            if len(rest) == 2 and method == "DELETE":
                return self._collection_delete(query)
            if len(rest) == 2 and method == "PATCH":
                return self._collection_update(body)
            if len(rest) == 4 and rest[2] == "Contact" and method == "PATCH":
                return self._collection_upsert(rest[3], body)
        return Answer(404, NOT_FOUND)

    # -- describe, limits ----------------------------------------------------
    def _limits(self) -> dict[str, Any]:
        used, most = self.org.usage()
        return {
            "DailyApiRequests": {"Max": most, "Remaining": max(0, most - used)},
            "DailyBulkApiBatches": {"Max": 15000, "Remaining": 15000},
            "DataStorageMB": {"Max": 1024, "Remaining": 1024},
        }

    def _sobject(
        self, method: str, version: str, rest: list[str], query: Mapping[str, str], body: Any
    ) -> Answer:
        org = self.org
        if not rest:
            if method == "GET":
                info = schema.salesforce_describe(org.fields, version)
                summary = {
                    k: v for k, v in info.items() if k not in ("fields", "childRelationships")
                }
                return Answer(200, {"objectDescribe": summary, "recentItems": []})
            if method == "POST":
                return self._create(body)
            return Answer(405, error("METHOD_NOT_ALLOWED", f"HTTP Method '{method}' not allowed"))
        if rest == ["describe"] and method == "GET":
            return Answer(200, schema.salesforce_describe(org.fields, version))
        if len(rest) == 1:
            return self._by_id(method, version, rest[0], query, body)
        if len(rest) == 2:
            return self._by_field(method, version, rest[0], rest[1], body)
        return Answer(404, NOT_FOUND)

    def _record(self, version: str, sf_id: str, fields: str | None = None) -> dict[str, Any]:
        full = self.org.full(sf_id)
        if fields:
            names = [f.strip() for f in fields.split(",") if f.strip()]
            full = {n: full.get(n) for n in ["Id", *names]}
        url = f"/services/data/{version}/sobjects/Contact/{sf_id}"
        return {"attributes": {"type": "Contact", "url": url}, **full}

    # -- single records -------------------------------------------------------
    def _create(self, body: Any) -> Answer:
        bad = _json_object(body)
        if bad:
            return bad
        sf_id, problem = self.org.create(body)
        if problem:
            return self.org.answer_problem(problem)
        return Answer(201, {"id": sf_id, "success": True, "errors": []}, wrote=True)

    def _by_id(
        self, method: str, version: str, sf_id: str, query: Mapping[str, str], body: Any
    ) -> Answer:
        org = self.org
        if method == "DELETE":
            problem = org.delete(sf_id)
            if problem is None:
                return Answer(204, None, wrote=True)
            return Answer(404, error(problem[0], problem[1]))
        if sf_id not in org.records:
            return Answer(404, NOT_FOUND)
        if method == "GET":
            return Answer(200, self._record(version, sf_id, query.get("fields")))
        if method == "PATCH":
            bad = _json_object(body)
            if bad:
                return bad
            issue = org.problem(body, sf_id=sf_id)
            if issue:
                return org.answer_problem(issue)
            org.write(sf_id, body)
            return Answer(204, None, wrote=True)
        return Answer(405, error("METHOD_NOT_ALLOWED", f"HTTP Method '{method}' not allowed"))

    def _by_field(self, method: str, version: str, field: str, value: str, body: Any) -> Answer:
        org = self.org
        bad_field = org.lookup_field(field)
        if bad_field:
            return org.answer_problem(bad_field)
        if method == "PATCH":
            bad = _json_object(body)
            if bad:
                return bad
            if field in body and str(body[field]) != value:
                msg = f"The {field} in the body differs from the one in the URL"
                return Answer(400, error("INVALID_FIELD", msg, [field]))
            sf_id, created, problem = org.upsert(field, value, body)
            if isinstance(problem, list):
                return _multiple(version, problem)
            if problem:
                return org.answer_problem(problem)
            payload: dict[str, Any] = {
                "id": sf_id,
                "success": True,
                "errors": [],
                "created": created,
            }
            return Answer(201 if created else 200, payload, wrote=True)
        found = org.matches(field, value)
        if not found:
            return Answer(404, NOT_FOUND)
        if len(found) > 1:
            return _multiple(version, found)
        if method == "GET":
            return Answer(200, self._record(version, found[0]))
        if method == "DELETE":
            org.delete(found[0])
            return Answer(204, None, wrote=True)
        return Answer(405, error("METHOD_NOT_ALLOWED", f"HTTP Method '{method}' not allowed"))

    # -- query ---------------------------------------------------------------
    def _query(self, version: str, text: str, headers: Mapping[str, str]) -> Answer:
        org = self.org
        try:
            q = soql.parse(text, org.fields)
        except soql.SoqlError as exc:
            return Answer(400, error(exc.code, exc.message))
        candidates = list(org.records)
        for cond in q.where:  # an index narrows the scan, as Salesforce's would
            if cond.op in ("=", "in") and cond.field in (org.ext_field, "Email"):
                found = {i for v in cond.values if v for i in org.matches(cond.field, v)}
                candidates = sorted(found)  # Ids grow with creation: creation order
                break
        rows = q.run([org.full(i) for i in candidates])
        records = [
            {
                "attributes": {
                    "type": "Contact",
                    "url": f"/services/data/{version}/sobjects/Contact/{r['Id']}",
                },
                **{f: r.get(f) for f in q.fields},
            }
            for r in rows
        ]
        return Answer(200, self._page(version, records, _batch_size(headers)))

    def _page(self, version: str, records: list[dict[str, Any]], size: int) -> dict[str, Any]:
        out: dict[str, Any] = {"totalSize": len(records), "done": len(records) <= size}
        if len(records) > size:
            cursor = f"01g{next(_cursor_ids):012d}"
            self.cursors[cursor] = (version, records, size)
            while len(self.cursors) > MAX_CURSORS:
                self.cursors.popitem(last=False)
            out["nextRecordsUrl"] = f"/services/data/{version}/query/{cursor}-{size}"
        out["records"] = records[:size]
        return out

    def _more(self, locator: str) -> Answer:
        cursor, _, offset = locator.rpartition("-")
        kept = self.cursors.get(cursor)
        if kept is None or not offset.isdigit():
            msg = "invalid query locator"
            return Answer(400, error("INVALID_QUERY_LOCATOR", msg))
        version, records, size = kept
        start = int(offset)
        page = records[start : start + size]
        out: dict[str, Any] = {"totalSize": len(records), "done": start + size >= len(records)}
        if not out["done"]:
            out["nextRecordsUrl"] = f"/services/data/{version}/query/{cursor}-{start + size}"
        out["records"] = page
        return Answer(200, out)

    # -- sObject Collections --------------------------------------------------
    def _collection_upsert(self, field: str, body: Any) -> Answer:
        org = self.org
        bad_field = org.lookup_field(field)
        if bad_field:
            return org.answer_problem(bad_field)
        records = body.get("records") if isinstance(body, dict) else None
        if not isinstance(records, list) or not records:
            return Answer(400, error("JSON_PARSER_ERROR", "records must be a non-empty list"))
        if len(records) > MAX_COLLECTION:
            msg = "record limit reached. cannot submit more than 200 records into this call"
            return Answer(400, error("EXCEEDED_ID_LIMIT", msg))
        for rec in records:
            attrs = rec.get("attributes") if isinstance(rec, dict) else None
            if not isinstance(attrs, dict) or attrs.get("type") != "Contact":
                msg = "Each record needs attributes with type Contact"
                return Answer(400, error("INVALID_TYPE", msg))
        problems: list[Problem | Rich | None] = []
        seen: set[str] = set()
        for rec in records:
            ext = rec.get(field)
            key = str(ext).lower() if ext else ""
            if not ext:
                msg = f"Field {field} not specified in an sobject instance"
                problems.append(("MISSING_ARGUMENT", msg, [field]))
            elif key in seen:
                msg = f"Duplicate external id specified: {ext}"
                problems.append(("DUPLICATE_EXTERNAL_ID", msg, [field]))
            else:
                seen.add(key)
                found = org.matches(field, str(ext))
                if len(found) > 1:
                    msg = f"{field} matches several records: {', '.join(found)}"
                    problems.append(("DUPLICATE_EXTERNAL_ID", msg, [field]))
                else:
                    problems.append(org.problem(rec, sf_id=found[0] if found else None))
        if body.get("allOrNone") and any(problems):
            out = [
                record_error(p) if p else {"success": False, "errors": [ROLLED_BACK]}
                for p in problems
            ]
            return Answer(200, out)
        results: list[dict[str, Any]] = []
        wrote = False
        for rec, problem in zip(records, problems, strict=True):
            if problem:
                results.append(record_error(problem))
                continue
            # Checked above; an earlier record of this call may have taken its email since.
            sf_id, created, late = org.upsert(field, str(rec[field]), rec)
            if late is not None:
                if isinstance(late, list):
                    msg = f"{field} matches several records: {', '.join(late)}"
                    late = ("DUPLICATE_EXTERNAL_ID", msg, [field])
                results.append(record_error(late))
                continue
            wrote = True
            results.append({"id": sf_id, "success": True, "errors": [], "created": created})
        return Answer(200, results, wrote=wrote)

    def _collection_update(self, body: Any) -> Answer:
        """``PATCH /composite/sobjects``: update records by their ``id`` (<= 200)."""
        org = self.org
        records = body.get("records") if isinstance(body, dict) else None
        if not isinstance(records, list) or not records:
            return Answer(400, error("JSON_PARSER_ERROR", "records must be a non-empty list"))
        if len(records) > MAX_COLLECTION:
            msg = "record limit reached. cannot submit more than 200 records into this call"
            return Answer(400, error("EXCEEDED_ID_LIMIT", msg))
        problems: list[Problem | Rich | None] = []
        for rec in records:
            attrs = rec.get("attributes") if isinstance(rec, dict) else None
            if not isinstance(attrs, dict) or attrs.get("type") != "Contact":
                msg = "Each record needs attributes with type Contact"
                return Answer(400, error("INVALID_TYPE", msg))
            sf_id = str(rec.get("id") or rec.get("Id") or "")
            if sf_id not in org.records:
                problems.append(
                    (
                        "ENTITY_IS_DELETED"
                        if sf_id in org.deleted
                        else "INVALID_CROSS_REFERENCE_KEY",
                        "invalid cross reference id",
                        [],
                    )
                )
                continue
            fields = {k: v for k, v in rec.items() if k not in ("id", "Id")}
            problems.append(org.problem(fields, sf_id=sf_id))
        if body.get("allOrNone") and any(problems):
            out = [
                record_error(p) if p else {"success": False, "errors": [ROLLED_BACK]}
                for p in problems
            ]
            return Answer(200, out)
        results: list[dict[str, Any]] = []
        for rec, problem in zip(records, problems, strict=True):
            if problem:
                results.append(record_error(problem))
                continue
            sf_id = str(rec.get("id") or rec.get("Id"))
            org.write(sf_id, {k: v for k, v in rec.items() if k not in ("id", "Id")})
            results.append({"id": sf_id, "success": True, "errors": []})
        return Answer(200, results, wrote=any(p is None for p in problems))

    def _collection_delete(self, query: Mapping[str, str]) -> Answer:
        ids = [i for i in query.get("ids", "").split(",") if i]
        if not ids:
            return Answer(400, error("MISSING_ARGUMENT", "ids parameter is required"))
        if len(ids) > MAX_COLLECTION:
            msg = "record limit reached. cannot submit more than 200 records into this call"
            return Answer(400, error("EXCEEDED_ID_LIMIT", msg))
        results: list[dict[str, Any]] = []
        wrote = False
        for sf_id in ids:
            problem = self.org.delete(sf_id)
            if problem is None:
                wrote = True
                results.append({"id": sf_id, "success": True, "errors": []})
            else:
                results.append(record_error(problem))
        return Answer(200, results, wrote=wrote)


def _multiple(version: str, ids: list[str]) -> Answer:
    return Answer(300, [f"/services/data/{version}/sobjects/Contact/{i}" for i in ids])


def _batch_size(headers: Mapping[str, str]) -> int:
    m = re.search(r"batchSize=(\d+)", headers.get("sforce-query-options", ""))
    return min(QUERY_BATCH, max(200, int(m.group(1)))) if m else QUERY_BATCH


def versions() -> list[dict[str, str]]:
    return [{"label": f"API {v}", "url": f"/services/data/v{v}", "version": v} for v in VERSIONS]


def _resources(version: str) -> dict[str, str]:
    base = f"/services/data/{version}"
    return {
        name: f"{base}/{name}" for name in ("sobjects", "query", "queryAll", "limits", "composite")
    }


def _global_describe(version: str) -> dict[str, Any]:
    contact = {
        "name": "Contact",
        "label": "Contact",
        "keyPrefix": "003",
        "custom": False,
        "queryable": True,
        "createable": True,
        "updateable": True,
        "deletable": True,
        "urls": {"sobject": f"/services/data/{version}/sobjects/Contact"},
    }
    return {"encoding": "UTF-8", "maxBatchSize": 200, "sobjects": [contact]}
