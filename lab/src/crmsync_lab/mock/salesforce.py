"""A Salesforce org as the mock serves it: Contact records over the REST API.

Speaks what crmsync's adapter and a strict client expect: upsert by external
id (201 created / 200 updated), delete by Id or external id, sObject
Collections upsert (<= 200, per-record results in input order, ``allOrNone``)
and delete, with Salesforce's own error bodies
``[{"message","errorCode","fields"}]`` and per-record
``{"success": false, "errors": [{"statusCode","message","fields"}]}``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from crmsync_lab.mock.common import Answer, Counts, Duplicates

FIELDS = frozenset({"Email", "FirstName", "LastName", "Company__c", "Status__c"})
MAX_COLLECTION = 200
VERSION = re.compile(r"^v\d+\.\d+$")
ID = re.compile(r"^[0-9A-Za-z]{15}([0-9A-Za-z]{3})?$")
NOT_FOUND = [{"errorCode": "NOT_FOUND", "message": "The requested resource does not exist"}]
ROLLED_BACK = {
    "statusCode": "ALL_OR_NONE_OPERATION_ROLLED_BACK",
    "message": "Record rolled back because not all records were valid and the request was "
    "using AllOrNone header",
    "fields": [],
}

Problem = tuple[str, str, list[str]]  # (errorCode, message, fields)


def error(code: str, message: str, fields: Sequence[str] = ()) -> list[dict[str, Any]]:
    return [{"message": message, "errorCode": code, "fields": list(fields)}]


def _record_error(p: Problem) -> dict[str, Any]:
    return {"success": False, "errors": [{"statusCode": p[0], "message": p[1], "fields": p[2]}]}


class SalesforceOrg:
    def __init__(self, name: str, index: int, *, ext_field: str = "CrmSync_Id__c") -> None:
        self.name = name
        self.prefix = f"003{index % 1000:03d}"
        self.ext_field = ext_field
        self.fields = FIELDS | {ext_field}
        self.records: dict[str, dict[str, Any]] = {}
        self.by_ext: dict[str, str] = {}
        self.deleted: set[str] = set()
        self.next = 1
        self.counts = Counts()
        self.dups = Duplicates()

    # -- inspection -------------------------------------------------------
    def view(self) -> list[dict[str, Any]]:
        return [{"Id": sf_id, **fields} for sf_id, fields in self.records.items()]

    def duplicates(self) -> dict[str, int]:
        return self.dups.view()

    def _keys(self, fields: Mapping[str, Any]) -> tuple[Any, Any]:
        return fields.get(self.ext_field), fields.get("Email")

    def reset(self) -> None:
        self.records.clear()
        self.by_ext.clear()
        self.deleted.clear()
        self.counts = Counts()
        self.dups = Duplicates()

    # -- records ----------------------------------------------------------
    def _new_id(self) -> str:
        n, self.next = self.next, self.next + 1
        return f"{self.prefix}{n:012d}"

    def _problem(self, values: Mapping[str, Any], *, creating: bool) -> Problem | None:
        for key in values:
            if key not in self.fields and key != "attributes":
                msg = f"No such column '{key}' on sobject of type Contact"
                return ("INVALID_FIELD", msg, [key])
        last = values.get("LastName")
        if (creating and not last) or ("LastName" in values and not last):
            return (
                "REQUIRED_FIELD_MISSING",
                "Required fields are missing: [LastName]",
                ["LastName"],
            )
        email = values.get("Email")
        if email and "@" not in str(email):
            msg = f"Email: invalid email address: {email}"
            return ("INVALID_EMAIL_ADDRESS", msg, ["Email"])
        return None

    def _write(self, ext: str, values: Mapping[str, Any]) -> tuple[str, bool]:
        fields = {k: v for k, v in values.items() if k != "attributes"}
        fields[self.ext_field] = ext
        sf_id = self.by_ext.get(ext)
        if sf_id is not None:
            record = self.records[sf_id]
            before = self._keys(record)
            record.update(fields)
            self.dups.change(before, self._keys(record))
            self.counts.updated += 1
            return sf_id, False
        sf_id = self._new_id()
        self.records[sf_id] = fields
        self.dups.change(None, self._keys(fields))
        self.by_ext[ext] = sf_id
        self.counts.created += 1
        return sf_id, True

    def _delete(self, sf_id: str) -> Problem | None:
        fields = self.records.pop(sf_id, None)
        if fields is not None:
            self.dups.change(self._keys(fields), None)
        else:
            if sf_id in self.deleted:
                return ("ENTITY_IS_DELETED", "entity is deleted", [])
            if not ID.match(sf_id):
                return ("MALFORMED_ID", f"malformed id {sf_id}", [])
            return ("INVALID_CROSS_REFERENCE_KEY", "invalid cross reference id", [])
        ext = fields.get(self.ext_field)
        if ext is not None and self.by_ext.get(str(ext)) == sf_id:
            del self.by_ext[str(ext)]
        self.deleted.add(sf_id)
        self.counts.deleted += 1
        return None

    # -- REST -------------------------------------------------------------
    def handle(self, method: str, segs: list[str], query: Mapping[str, str], body: Any) -> Answer:
        """``segs`` is the path after ``/sf/<account>``."""
        if (
            len(segs) < 4
            or segs[0] != "services"
            or segs[1] != "data"
            or not VERSION.match(segs[2])
        ):
            return Answer(404, NOT_FOUND)
        rest = segs[3:]
        if rest[0] == "sobjects" and len(rest) >= 2 and rest[1] == "Contact":
            return self._sobject(method, rest[2:], body)
        if rest[0] == "composite" and len(rest) >= 2 and rest[1] == "sobjects":
            if len(rest) == 2 and method == "DELETE":
                return self._collection_delete(query)
            if len(rest) == 4 and rest[2] == "Contact" and method == "PATCH":
                return self._collection_upsert(rest[3], body)
        return Answer(404, NOT_FOUND)

    def _sobject(self, method: str, rest: list[str], body: Any) -> Answer:
        if not rest and method == "POST":  # plain create: no idempotency (what naive clients do)
            if not isinstance(body, dict):
                return Answer(400, error("JSON_PARSER_ERROR", "The request body is not an object"))
            problem = self._problem(body, creating=True)
            if problem:
                return Answer(400, error(*problem))
            sf_id = self._new_id()
            self.records[sf_id] = {k: v for k, v in body.items() if k != "attributes"}
            self.dups.change(None, self._keys(self.records[sf_id]))
            self.counts.created += 1
            return Answer(201, {"id": sf_id, "success": True, "errors": []}, wrote=True)
        if len(rest) == 1:
            sf_id = rest[0]
            if method == "GET":
                fields = self.records.get(sf_id)
                return Answer(200, {"Id": sf_id, **fields}) if fields else Answer(404, NOT_FOUND)
            if method == "DELETE":
                problem = self._delete(sf_id)
                if problem is None:
                    return Answer(204, None, wrote=True)
                return Answer(404, error(problem[0], problem[1]))
            return Answer(405, error("METHOD_NOT_ALLOWED", f"HTTP Method '{method}' not allowed"))
        if len(rest) == 2:
            field, ext = rest
            if field != self.ext_field:
                msg = f"Provided external ID field does not exist or is not accessible: {field}"
                return Answer(404, error("NOT_FOUND", msg))
            if method == "PATCH":
                return self._upsert_one(ext, body)
            found = self.by_ext.get(ext)
            if found is None:
                return Answer(404, NOT_FOUND)
            if method == "GET":
                return Answer(200, {"Id": found, **self.records[found]})
            if method == "DELETE":
                self._delete(found)
                return Answer(204, None, wrote=True)
        return Answer(404, NOT_FOUND)

    def _upsert_one(self, ext: str, body: Any) -> Answer:
        if not isinstance(body, dict):
            return Answer(400, error("JSON_PARSER_ERROR", "The request body is not an object"))
        if self.ext_field in body and str(body[self.ext_field]) != ext:
            msg = f"The {self.ext_field} in the body differs from the one in the URL"
            return Answer(400, error("INVALID_FIELD", msg, [self.ext_field]))
        problem = self._problem(body, creating=ext not in self.by_ext)
        if problem:
            return Answer(400, error(*problem))
        sf_id, created = self._write(ext, body)
        payload = {"id": sf_id, "success": True, "errors": [], "created": created}
        return Answer(201 if created else 200, payload, wrote=True)

    def _collection_upsert(self, field: str, body: Any) -> Answer:
        if field != self.ext_field:
            msg = f"Provided external ID field does not exist or is not accessible: {field}"
            return Answer(404, error("NOT_FOUND", msg))
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
        problems: list[Problem | None] = []
        seen: set[str] = set()
        for rec in records:
            ext = rec.get(field)
            if not ext:
                msg = f"Field {field} not specified in an sobject instance"
                problems.append(("MISSING_ARGUMENT", msg, [field]))
            elif str(ext) in seen:
                msg = f"Duplicate external id specified: {ext}"
                problems.append(("DUPLICATE_EXTERNAL_ID", msg, [field]))
            else:
                seen.add(str(ext))
                problems.append(self._problem(rec, creating=str(ext) not in self.by_ext))
        if body.get("allOrNone") and any(problems):
            out = [
                _record_error(p) if p else {"success": False, "errors": [ROLLED_BACK]}
                for p in problems
            ]
            return Answer(200, out)
        results: list[dict[str, Any]] = []
        wrote = False
        for rec, problem in zip(records, problems, strict=True):
            if problem:
                results.append(_record_error(problem))
                continue
            sf_id, created = self._write(str(rec[field]), rec)
            wrote = True
            results.append({"id": sf_id, "success": True, "errors": [], "created": created})
        return Answer(200, results, wrote=wrote)

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
            problem = self._delete(sf_id)
            if problem is None:
                wrote = True
                results.append({"id": sf_id, "success": True, "errors": []})
            else:
                results.append(_record_error(problem))
        return Answer(200, results, wrote=wrote)
