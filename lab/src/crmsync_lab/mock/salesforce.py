"""A Salesforce org as the mock serves it: Contact records and their rules.

Writes as the REST API applies them: the Contact's fields (schema.py) with
their create/update permissions, the required ``LastName``, valid emails,
field lengths, a unique external id field (``DUPLICATE_VALUE``), and the org's
duplicate rule (``duplicate_rule: block``: creating a contact whose email
another one has, or changing an email to one, is ``DUPLICATES_DETECTED``
with Salesforce's ``duplicateResult``). Upsert goes by the external id field
or any idLookup field (``Email``): no match creates, one match updates,
several answer 300 with the matches. The REST routes are in salesforce_rest.py.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from crmsync_lab.mock import schema
from crmsync_lab.mock.common import Answer, Counts, Duplicates, Index

ID = re.compile(r"^[0-9A-Za-z]{15}([0-9A-Za-z]{3})?$")
OWNER_ID = "005000000000001AAA"
DUPLICATE_RULE = "Standard_Contact_Duplicate_Rule"

Problem = tuple[str, str, list[str]]  # (errorCode, message, fields)
# A problem that carries more than the three keys (DUPLICATES_DETECTED).
Rich = dict[str, Any]


def error(code: str, message: str, fields: Sequence[str] = ()) -> list[dict[str, Any]]:
    return [{"message": message, "errorCode": code, "fields": list(fields)}]


def record_error(p: Problem | Rich) -> dict[str, Any]:
    """A failed record in an sObject Collections answer."""
    if isinstance(p, dict):
        return {"success": False, "errors": [p]}
    return {"success": False, "errors": [{"statusCode": p[0], "message": p[1], "fields": p[2]}]}


def rest_error(p: Problem | Rich) -> list[dict[str, Any]]:
    """The same problem as a single-record REST answer body."""
    if isinstance(p, dict):
        body = {k: v for k, v in p.items() if k != "statusCode"}
        return [{**body, "errorCode": p["statusCode"]}]
    return error(*p)


def _sf_time(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%S.000+0000")


class SalesforceOrg:
    def __init__(
        self,
        name: str,
        index: int,
        *,
        id_field: str = "ok",
        duplicate_rule: str = "allow",
        ext_field: str = schema.SF_EXT,
    ) -> None:
        self.name = name
        self.prefix = f"003{index % 1000:03d}"
        self.ext_field = ext_field
        self.fields = schema.salesforce_fields(id_field, ext_field)
        ext = self.fields.get(ext_field)
        self.ext_unique = bool(ext and ext["unique"])
        self.block_duplicates = duplicate_rule == "block"
        self.records: dict[str, dict[str, Any]] = {}
        self.times: dict[str, tuple[float, float]] = {}
        self.by_ext = Index()
        self.by_email = Index()
        self.deleted: set[str] = set()
        self.next = 1
        self.counts = Counts()
        self.dups = Duplicates()
        self.usage: Callable[[], tuple[int, int]] = lambda: (0, 0)  # set by the server

    # -- inspection -------------------------------------------------------
    def view(self) -> list[dict[str, Any]]:
        return [{"Id": sf_id, **fields} for sf_id, fields in self.records.items()]

    def duplicates(self) -> dict[str, int]:
        return self.dups.view()

    def reset(self) -> None:
        self.records.clear()
        self.times.clear()
        self.by_ext.clear()
        self.by_email.clear()
        self.deleted.clear()
        self.counts = Counts()
        self.dups = Duplicates()

    def full(self, sf_id: str) -> dict[str, Any]:
        """A record with the fields Salesforce fills in itself."""
        fields = self.records[sf_id]
        created, modified = self.times[sf_id]
        first, last = fields.get("FirstName"), fields.get("LastName")
        return {
            "Id": sf_id,
            "IsDeleted": False,
            "Name": " ".join(str(p) for p in (first, last) if p),
            "OwnerId": OWNER_ID,
            **fields,
            "CreatedDate": _sf_time(created),
            "LastModifiedDate": _sf_time(modified),
            "SystemModstamp": _sf_time(modified),
        }

    # -- rules --------------------------------------------------------------
    def _new_id(self) -> str:
        n, self.next = self.next, self.next + 1
        return f"{self.prefix}{n:012d}"

    def problem(self, values: Mapping[str, Any], *, sf_id: str | None) -> Problem | Rich | None:
        """Why ``values`` cannot be written (to record ``sf_id``; None: a new one)."""
        creating = sf_id is None
        locked = []
        for key, value in values.items():
            if key == "attributes":
                continue
            field = self.fields.get(key)
            if field is None:
                return (
                    "INVALID_FIELD",
                    f"No such column '{key}' on sobject of type Contact",
                    [key],
                )
            if not field["createable" if creating else "updateable"]:
                locked.append(key)
                continue
            length = field["length"]
            text = field["type"] in ("string", "email", "phone", "textarea")
            if text and value is not None and len(str(value)) > length:
                msg = f"{field['label']}: data value too large: {value} (max length={length})"
                return ("STRING_TOO_LONG", msg, [key])
        if locked:
            msg = (
                f"Unable to create/update fields: {', '.join(locked)}. Please check the security "
                "settings of this field and verify that it is read/write for your profile or "
                "permission set."
            )
            return ("INVALID_FIELD_FOR_INSERT_UPDATE", msg, locked)
        last = values.get("LastName")
        if (creating and not last) or ("LastName" in values and not last):
            return (
                "REQUIRED_FIELD_MISSING",
                "Required fields are missing: [LastName]",
                ["LastName"],
            )
        email = values.get("Email")
        if email and "@" not in str(email):
            return ("INVALID_EMAIL_ADDRESS", f"Email: invalid email address: {email}", ["Email"])
        ext = values.get(self.ext_field)
        if self.ext_unique and ext not in (None, ""):
            owners = [i for i in self.by_ext.get(ext) if i != sf_id]
            if owners:
                msg = (
                    f"duplicate value found: {self.ext_field} duplicates value on record "
                    f"with id: {owners[0]}"
                )
                return ("DUPLICATE_VALUE", msg, [self.ext_field])
        if self.block_duplicates and email:
            old = self.records[sf_id].get("Email") if sf_id else None
            same = [i for i in self.by_email.get(email) if i != sf_id]
            if same and Index.key(old) != Index.key(email):
                return self._duplicates_detected(same)
        return None

    def _duplicates_detected(self, matches: list[str]) -> Rich:
        records = [
            {
                "additionalInformation": [],
                "fieldDiffs": [],
                "matchConfidence": 100.0,
                "record": {
                    "attributes": {
                        "type": "Contact",
                        "url": f"/services/data/v60.0/sobjects/Contact/{i}",
                    },
                    "Id": i,
                },
            }
            for i in matches
        ]
        return {
            "duplicateResult": {
                "allowSave": False,
                "duplicateRule": DUPLICATE_RULE,
                "duplicateRuleEntityType": "Contact",
                "errorMessage": "Use one of these records?",
                "matchResults": [
                    {
                        "entityType": "Contact",
                        "errors": [],
                        "matchEngine": "ExactMatchEngine",
                        "matchRecords": records,
                        "rule": "Standard_Contact_Match_Rule_v1_1",
                        "size": len(records),
                        "success": True,
                    }
                ],
            },
            "statusCode": "DUPLICATES_DETECTED",
            "message": "Use one of these records?",
            "fields": [],
        }

    # -- writes -------------------------------------------------------------
    def _keys(self, fields: Mapping[str, Any]) -> tuple[Any, Any]:
        return fields.get(self.ext_field), fields.get("Email")

    def write(self, sf_id: str | None, values: Mapping[str, Any]) -> str:
        """Apply checked ``values`` to ``sf_id`` (None: a new record); its Id."""
        now = time.time()
        fields = {k: v for k, v in values.items() if k != "attributes"}
        if sf_id is None:
            sf_id = self._new_id()
            self.records[sf_id] = {}
            self.times[sf_id] = (now, now)
            self.counts.created += 1
        else:
            self.times[sf_id] = (self.times[sf_id][0], now)
            self.counts.updated += 1
        record = self.records[sf_id]
        before = self._keys(record) if record else None
        self.by_ext.move(
            sf_id,
            record.get(self.ext_field),
            fields.get(self.ext_field, record.get(self.ext_field)),
        )
        self.by_email.move(sf_id, record.get("Email"), fields.get("Email", record.get("Email")))
        record.update(fields)
        self.dups.change(before, self._keys(record))
        return sf_id

    def delete(self, sf_id: str) -> Problem | None:
        fields = self.records.pop(sf_id, None)
        if fields is None:
            if sf_id in self.deleted:
                return ("ENTITY_IS_DELETED", "entity is deleted", [])
            if not ID.match(sf_id):
                return ("MALFORMED_ID", f"malformed id {sf_id}", [])
            return ("INVALID_CROSS_REFERENCE_KEY", "invalid cross reference id", [])
        del self.times[sf_id]
        self.dups.change(self._keys(fields), None)
        self.by_ext.move(sf_id, fields.get(self.ext_field), None)
        self.by_email.move(sf_id, fields.get("Email"), None)
        self.deleted.add(sf_id)
        self.counts.deleted += 1
        return None

    def create(self, values: Mapping[str, Any]) -> tuple[str | None, Problem | Rich | None]:
        problem = self.problem(values, sf_id=None)
        return (None, problem) if problem else (self.write(None, values), None)

    def lookup_field(self, field: str) -> Problem | None:
        """Why ``field`` cannot identify records for an upsert (None: it can)."""
        info = self.fields.get(field)
        if info is None:
            msg = f"Provided external ID field does not exist or is not accessible: {field}"
            return ("NOT_FOUND", msg, [])
        if not (info["externalId"] or info["idLookup"]) or field == "Id":
            msg = f"Field name provided, {field} is not an External ID or indexed field for Contact"
            return ("INVALID_FIELD", msg, [field])
        return None

    def matches(self, field: str, value: str) -> list[str]:
        if field == self.ext_field:
            return list(self.by_ext.get(value))
        if field == "Email":
            return list(self.by_email.get(value))
        key = Index.key(value)
        return [i for i, r in self.records.items() if Index.key(r.get(field)) == key]

    def upsert(
        self, field: str, value: str, values: Mapping[str, Any]
    ) -> tuple[str | None, bool, Problem | Rich | list[str] | None]:
        """(Id, created, problem); several matches give their Ids as the problem."""
        found = self.matches(field, value)
        if len(found) > 1:
            return None, False, found
        sf_id = found[0] if found else None
        merged = dict(values)
        if sf_id is None:
            merged[field] = value
        problem = self.problem(merged, sf_id=sf_id)
        if problem:
            return None, False, problem
        return self.write(sf_id, merged), sf_id is None, None

    # -- seeding (control API) ---------------------------------------------
    def seed(self, values: Mapping[str, Any]) -> tuple[str | None, str | None]:
        """Load one existing record; (Id, None) or (None, why it was refused)."""
        sf_id, problem = self.create(values)
        if problem is None:
            self.counts.created -= 1  # seeds are not writes a client made
            return sf_id, None
        if isinstance(problem, dict):
            return None, str(problem["message"])
        return None, problem[1]

    def answer_problem(self, problem: Problem | Rich) -> Answer:
        status = 404 if not isinstance(problem, dict) and problem[0] == "NOT_FOUND" else 400
        return Answer(status, rest_error(problem))
