"""A HubSpot portal as the mock serves it: contact records and their rules.

Properties as the portal defines them (schema.py; more can be created over
the API): unknown ones are ``PROPERTY_DOESNT_EXIST``, read-only ones
``READ_ONLY_VALUE``, enumerations take their options only. ``email`` is
unique per portal, and so is every property with ``hasUniqueValue``
(``crmsync_id`` unless the account says otherwise): a write that takes
another contact's value is 409 ``Contact already exists. Existing ID: <id>``,
as HubSpot answers. The REST routes are in hubspot_rest.py.
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import orjson

from crmsync_lab.mock import schema
from crmsync_lab.mock.common import Answer, Counts, Duplicates

DEFAULT_PROPERTIES = (
    "createdate",
    "email",
    "firstname",
    "hs_object_id",
    "lastmodifieddate",
    "lastname",
)
SYSTEM = ("hs_object_id", "createdate", "lastmodifieddate")


def error(category: str, message: str, **extra: Any) -> dict[str, Any]:
    return {
        "status": "error",
        "message": message,
        "correlationId": str(uuid.uuid4()),
        "category": category,
        **extra,
    }


def batch_error(category: str, message: str, ids: list[str]) -> dict[str, Any]:
    """One error of a batch answer (the official client requires every key)."""
    return error(category, message, context={"ids": ids}, links={}, errors=[])


_second: list[Any] = [-1, ""]


def now_iso() -> str:
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


Problem = tuple[int, str, str]  # (status, category, message)


class HubSpotPortal:
    def __init__(
        self,
        name: str,
        index: int,
        *,
        rng: random.Random | None = None,
        id_field: str = "ok",
    ) -> None:
        self.name = name
        self.index = index
        self.rng = rng or random.Random(index)
        self.properties = schema.hubspot_properties(id_field)
        self.records: dict[str, dict[str, str]] = {}
        self.times: dict[str, tuple[str, str]] = {}  # id -> (created, updated) ISO times
        self.unique: dict[str, dict[str, str]] = {}
        self._index_unique()
        self.next = 1
        self.counts = Counts()
        self.dups = Duplicates()

    def _index_unique(self) -> None:
        names = ["email"] + [
            n for n, p in self.properties.items() if p["hasUniqueValue"] and n != "hs_object_id"
        ]
        for name in names:
            self.unique.setdefault(name, {})

    @staticmethod
    def _fold(prop: str, value: str) -> str:
        return value.lower() if prop == "email" else value

    # -- inspection -------------------------------------------------------
    def view(self) -> list[dict[str, Any]]:
        return [{"id": i, "properties": dict(p)} for i, p in self.records.items()]

    def duplicates(self) -> dict[str, int]:
        return self.dups.view()

    def reset(self) -> None:
        self.records.clear()
        self.times.clear()
        self.unique = {p: {} for p in self.unique}
        self.counts = Counts()
        self.dups = Duplicates()

    def obj(
        self, hs_id: str, wanted: list[str] | None = None, new: bool | None = None
    ) -> dict[str, Any]:
        """The contact as the API shows it: every stored property (``wanted``
        None) or the asked ones (null when unset) plus the system ones."""
        created, updated = self.times[hs_id]
        stored = self.records[hs_id]
        system = {"hs_object_id": hs_id, "createdate": created, "lastmodifieddate": updated}
        if wanted is None:
            props: dict[str, Any] = {**stored, **system}
        else:
            props = {n: stored.get(n) for n in wanted if n in self.properties}
            props.update(system)
        obj: dict[str, Any] = {
            "id": hs_id,
            "properties": props,
            "createdAt": created,
            "updatedAt": updated,
            "archived": False,
        }
        if new is not None:
            obj["new"] = new
        return obj

    def find(self, key: str, prop: str | None) -> str | None:
        if prop is None or prop == "hs_object_id":
            return key if key in self.records else None
        return self.unique.get(prop, {}).get(self._fold(prop, key))

    def id_property_problem(self, prop: str | None) -> Problem | None:
        """Why ``prop`` cannot name one contact (None: it can)."""
        if prop is None or prop == "hs_object_id" or prop in self.unique:
            return None
        if prop not in self.properties:
            msg = f"Unable to find property {prop} on object type 0-1"
            return 400, "VALIDATION_ERROR", msg
        msg = f"Property {prop} is not a unique identifier property; it has no unique values"
        return 400, "VALIDATION_ERROR", msg

    def problem(self, props: Any, hs_id: str | None) -> Problem | None:
        """(status, category, message) when the properties cannot be written."""
        if not isinstance(props, dict):
            return 400, "VALIDATION_ERROR", "properties must be an object"
        for name, value in props.items():
            prop = self.properties.get(name)
            if prop is None:
                msg = _invalid(name, f'Property "{name}" does not exist', "PROPERTY_DOESNT_EXIST")
                return 400, "VALIDATION_ERROR", msg
            if prop["modificationMetadata"]["readOnlyValue"]:
                msg = f'"{name}" is a read only property; its value cannot be set.'
                return 400, "VALIDATION_ERROR", _invalid(name, msg, "READ_ONLY_VALUE")
            if name == "email" and value and "@" not in str(value):
                msg = _invalid(name, f"Email address {value} is invalid", "INVALID_EMAIL")
                return 400, "VALIDATION_ERROR", msg
            if prop["type"] == "enumeration" and value:
                options = [o["value"] for o in prop["options"]]
                if str(value) not in options:
                    msg = f"{value} was not one of the allowed options: {options}"
                    return 400, "VALIDATION_ERROR", _invalid(name, msg, "INVALID_OPTION")
        for prop_name, owners in self.unique.items():
            value = props.get(prop_name)
            if value:
                owner = owners.get(self._fold(prop_name, str(value)))
                if owner is not None and owner != hs_id:
                    return 409, "CONFLICT", f"Contact already exists. Existing ID: {owner}"
        return None

    def write(self, hs_id: str | None, props: Mapping[str, Any]) -> str:
        now = now_iso()
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
        before = (record.get(schema.HS_EXT), record.get("email")) if record else None
        for name, value in props.items():
            text = "" if value is None else str(value)
            owners = self.unique.get(name)
            if owners is not None:
                old = record.get(name)
                if old:
                    owners.pop(self._fold(name, old), None)
                if text:
                    owners[self._fold(name, text)] = hs_id
            record[name] = text
        self.dups.change(before, (record.get(schema.HS_EXT), record.get("email")))
        return hs_id

    def archive(self, hs_id: str) -> bool:
        record = self.records.pop(hs_id, None)
        if record is None:
            return False
        del self.times[hs_id]
        self.dups.change((record.get(schema.HS_EXT), record.get("email")), None)
        for name, owners in self.unique.items():
            value = record.get(name)
            if value:
                owners.pop(self._fold(name, value), None)
        self.counts.deleted += 1
        return True

    def create_property(self, body: Any) -> Answer:
        """``POST /crm/v3/properties/contacts``: a new (custom) property."""
        if not isinstance(body, dict):
            return Answer(400, error("VALIDATION_ERROR", "the body must be a JSON object"))
        name = str(body.get("name") or "")
        missing = [
            k for k in ("name", "label", "type", "fieldType", "groupName") if not body.get(k)
        ]
        if missing:
            msg = f"Property create is missing required field(s): {', '.join(missing)}"
            return Answer(400, error("VALIDATION_ERROR", msg))
        if name in self.properties:
            msg = f"Property named '{name}' already exists."
            return Answer(409, error("OBJECT_ALREADY_EXISTS", msg))
        if body["type"] not in ("string", "number", "date", "datetime", "enumeration", "bool"):
            return Answer(400, error("VALIDATION_ERROR", f"Invalid property type {body['type']}"))
        options = [
            {"displayOrder": i, "hidden": False, **o}
            for i, o in enumerate(body.get("options") or [])
            if isinstance(o, dict)
        ]
        flags = "xu" if body.get("hasUniqueValue") else "x"
        prop = schema.hubspot_property(
            name,
            str(body["type"]),
            str(body["fieldType"]),
            str(body["label"]),
            str(body["groupName"]),
            flags,
            created=now_iso(),
            options=options,
        )
        prop["description"] = str(body.get("description") or "")
        self.properties[name] = prop
        self._index_unique()
        return Answer(201, prop)

    def seed(self, props: Mapping[str, Any]) -> tuple[str | None, str | None]:
        """Load one existing contact; (id, None) or (None, why it was refused)."""
        problem = self.problem(dict(props), None)
        if problem:
            return None, problem[2]
        hs_id = self.write(None, props)
        self.counts.created -= 1  # seeds are not writes a client made
        return hs_id, None
