"""A HubSpot portal as the mock serves it: contacts over the CRM v3 API.

Speaks what crmsync's adapter and a strict client expect: create (201; 409
CONFLICT "Contact already exists. Existing ID: N" on a taken email or
``crmsync_id``), read/update/delete by id or by a unique ``idProperty``,
``batch/upsert`` (<= 100 inputs, 200 COMPLETE or 207 with ``errors`` whose
``context.ids`` name the inputs; results deliberately NOT in input order) and
``batch/archive`` (204), with HubSpot's error body
``{"status":"error","message","correlationId","category"}``.
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import orjson

from crmsync_lab.mock.common import Answer, Counts, Duplicates

PROPERTIES = frozenset(
    {"email", "firstname", "lastname", "company", "crmsync_status", "crmsync_id"}
)
UNIQUE = ("crmsync_id", "email")
MAX_BATCH = 100


def error(category: str, message: str, **extra: Any) -> dict[str, Any]:
    return {
        "status": "error",
        "message": message,
        "correlationId": str(uuid.uuid4()),
        "category": category,
        **extra,
    }


_second: list[Any] = [-1, ""]


def _now_iso() -> str:
    """Now as HubSpot writes it (``2024-05-01T10:00:00.123Z``); the date part is cached."""
    t = time.time()
    sec = int(t)
    if sec != _second[0]:
        _second[0] = sec
        _second[1] = datetime.fromtimestamp(sec, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{_second[1]}.{int((t - sec) * 1000):03d}Z"


def _invalid(name: str, message: str, code: str) -> str:
    detail = [{"isValid": False, "message": message, "error": code, "name": name}]
    return "Property values were not valid: " + orjson.dumps(detail).decode()


class HubSpotPortal:
    def __init__(self, name: str, index: int, *, rng: random.Random | None = None) -> None:
        self.name = name
        self.index = index
        self.rng = rng or random.Random(index)
        self.records: dict[str, dict[str, str]] = {}
        self.times: dict[str, tuple[str, str]] = {}  # id -> (created, updated) ISO times
        self.unique: dict[str, dict[str, str]] = {p: {} for p in UNIQUE}
        self.next = 1
        self.counts = Counts()
        self.dups = Duplicates()

    # -- inspection -------------------------------------------------------
    def view(self) -> list[dict[str, Any]]:
        return [{"id": i, "properties": dict(p)} for i, p in self.records.items()]

    def duplicates(self) -> dict[str, int]:
        return self.dups.view()

    def reset(self) -> None:
        self.records.clear()
        self.times.clear()
        self.unique = {p: {} for p in UNIQUE}
        self.counts = Counts()
        self.dups = Duplicates()

    # -- records ----------------------------------------------------------
    def _object(self, hs_id: str, new: bool | None = None) -> dict[str, Any]:
        created, updated = self.times[hs_id]
        props = dict(self.records[hs_id])
        props["hs_object_id"] = hs_id
        props["createdate"] = created
        props["lastmodifieddate"] = updated
        obj: dict[str, Any] = {
            "id": hs_id,
            "properties": props,
            "createdAt": props["createdate"],
            "updatedAt": props["lastmodifieddate"],
            "archived": False,
        }
        if new is not None:
            obj["new"] = new
        return obj

    def _find(self, key: str, prop: str | None) -> str | None:
        if prop is None or prop == "hs_object_id":
            return key if key in self.records else None
        return self.unique.get(prop, {}).get(key.lower() if prop == "email" else key)

    def _problem(self, props: Any, hs_id: str | None) -> tuple[int, str, str] | None:
        """(status, category, message) when the properties cannot be written."""
        if not isinstance(props, dict):
            return 400, "VALIDATION_ERROR", "properties must be an object"
        for name, value in props.items():
            if name not in PROPERTIES:
                msg = _invalid(name, f'Property "{name}" does not exist', "PROPERTY_DOESNT_EXIST")
                return 400, "VALIDATION_ERROR", msg
            if name == "email" and value and "@" not in str(value):
                msg = _invalid(name, f"Email address {value} is invalid", "INVALID_EMAIL")
                return 400, "VALIDATION_ERROR", msg
        for prop in UNIQUE:
            value = props.get(prop)
            if value:
                key = str(value).lower() if prop == "email" else str(value)
                owner = self.unique[prop].get(key)
                if owner is not None and owner != hs_id:
                    return 409, "CONFLICT", f"Contact already exists. Existing ID: {owner}"
        return None

    def _write(self, hs_id: str | None, props: Mapping[str, Any]) -> str:
        now = _now_iso()
        if hs_id is None:
            hs_id = str(self.index * 1_000_000_000 + self.next)
            self.next += 1
            self.records[hs_id] = {}
            self.times[hs_id] = (now, now)
            self.counts.created += 1
        else:
            self.times[hs_id] = (self.times[hs_id][0], now)
            self.counts.updated += 1
        record = self.records[hs_id]
        before = (record.get("crmsync_id"), record.get("email")) if record else None
        for name, value in props.items():
            text = "" if value is None else str(value)
            if name in UNIQUE:
                old = record.get(name)
                if old:
                    self.unique[name].pop(old.lower() if name == "email" else old, None)
                if text:
                    self.unique[name][text.lower() if name == "email" else text] = hs_id
            record[name] = text
        self.dups.change(before, (record.get("crmsync_id"), record.get("email")))
        return hs_id

    def _archive(self, hs_id: str) -> bool:
        record = self.records.pop(hs_id, None)
        if record is None:
            return False
        del self.times[hs_id]
        self.dups.change((record.get("crmsync_id"), record.get("email")), None)
        for name in UNIQUE:
            value = record.get(name)
            if value:
                self.unique[name].pop(value.lower() if name == "email" else value, None)
        self.counts.deleted += 1
        return True

    # -- REST -------------------------------------------------------------
    def handle(self, method: str, segs: list[str], query: Mapping[str, str], body: Any) -> Answer:
        """``segs`` is the path after ``/hs/<account>``."""
        if segs[:4] != ["crm", "v3", "objects", "contacts"]:
            return Answer(404, error("OBJECT_NOT_FOUND", "Unable to infer object type"))
        rest = segs[4:]
        if not rest:
            if method == "POST":
                return self._create(body)
        elif len(rest) == 2 and rest[0] == "batch" and method == "POST":
            if rest[1] == "upsert":
                return self._batch_upsert(body)
            if rest[1] == "archive":
                return self._batch_archive(body)
        elif len(rest) == 1:
            return self._one(method, rest[0], query.get("idProperty"), body)
        return Answer(404, error("OBJECT_NOT_FOUND", "Resource not found"))

    def _create(self, body: Any) -> Answer:
        props = body.get("properties") if isinstance(body, dict) else None
        problem = self._problem(props, None)
        if problem:
            return Answer(problem[0], error(problem[1], problem[2]))
        assert isinstance(props, dict)
        return Answer(201, self._object(self._write(None, props)), wrote=True)

    def _one(self, method: str, key: str, prop: str | None, body: Any) -> Answer:
        hs_id = self._find(key, prop)
        if hs_id is None:
            msg = "Object not found.  objectId are usually numeric."
            return Answer(404, error("OBJECT_NOT_FOUND", msg, context={"id": [key]}))
        if method == "GET":
            return Answer(200, self._object(hs_id))
        if method == "DELETE":
            self._archive(hs_id)
            return Answer(204, None, wrote=True)
        if method == "PATCH":
            props = body.get("properties") if isinstance(body, dict) else None
            problem = self._problem(props, hs_id)
            if problem:
                return Answer(problem[0], error(problem[1], problem[2]))
            assert isinstance(props, dict)
            return Answer(200, self._object(self._write(hs_id, props)), wrote=True)
        return Answer(405, error("VALIDATION_ERROR", f"Method {method} not allowed"))

    def _inputs(self, body: Any) -> list[Any] | Answer:
        inputs = body.get("inputs") if isinstance(body, dict) else None
        if not isinstance(inputs, list) or not inputs:
            return Answer(400, error("VALIDATION_ERROR", "inputs must be a non-empty list"))
        if len(inputs) > MAX_BATCH:
            msg = f"Batch input limit exceeded: {len(inputs)} inputs, at most {MAX_BATCH}"
            return Answer(400, error("VALIDATION_ERROR", msg))
        return inputs

    def _batch_upsert(self, body: Any) -> Answer:
        inputs = self._inputs(body)
        if isinstance(inputs, Answer):
            return inputs
        ids = [str(i.get("id")) if isinstance(i, dict) else "" for i in inputs]
        dup: list[str] = []
        if len(set(ids)) != len(ids):
            dup = sorted({i for i in ids if ids.count(i) > 1})  # rare: the error path
        if dup:
            msg = f"Duplicate IDs found in batch input: {dup}. IDs must be unique"
            return Answer(400, error("VALIDATION_ERROR", msg))
        started = _now_iso()
        results: list[dict[str, Any]] = []
        errors: list[dict[str, Any]] = []
        for item, key in zip(inputs, ids, strict=True):
            prop = item.get("idProperty") if isinstance(item, dict) else None
            if prop not in UNIQUE or not key:
                msg = "idProperty must name a unique property (crmsync_id or email)"
                errors.append(error("VALIDATION_ERROR", msg, context={"ids": [key]}))
                continue
            props = dict(item.get("properties") or {})
            props[prop] = key
            hs_id = self._find(key, prop)
            problem = self._problem(props, hs_id)
            if problem:
                errors.append(error(problem[1], problem[2], context={"ids": [key]}))
                continue
            results.append(self._object(self._write(hs_id, props), new=hs_id is None))
        # HubSpot does not promise input order; neither does the mock.
        self.rng.shuffle(results)
        payload: dict[str, Any] = {
            "status": "COMPLETE",
            "results": results,
            "startedAt": started,
            "completedAt": _now_iso(),
        }
        if errors:
            payload["numErrors"] = len(errors)
            payload["errors"] = errors
        return Answer(207 if errors else 200, payload, wrote=bool(results))

    def _batch_archive(self, body: Any) -> Answer:
        inputs = self._inputs(body)
        if isinstance(inputs, Answer):
            return inputs
        wrote = False
        for item in inputs:
            if isinstance(item, dict) and item.get("id") is not None:
                wrote = self._archive(str(item["id"])) or wrote
        return Answer(204, None, wrote=wrote)
