"""Salesforce REST adapter: upsert by external id, sObject Collections in batch.

Single: ``PATCH /services/data/vXX.X/sobjects/Contact/<ExtIdField>/<contact id>``
(201 created / 200 updated / 204 on old API versions) and
``DELETE /services/data/vXX.X/sobjects/Contact/<Salesforce Id>``.
Batch: ``PATCH .../composite/sobjects/Contact/<ExtIdField>`` (<= 200 records,
``allOrNone: false``, results in input order) and
``DELETE .../composite/sobjects?ids=...&allOrNone=false``.
Upserting by our id makes every retry idempotent: a lost response retried
updates the record it created instead of creating a second one.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any
from urllib.parse import quote

import aiohttp

from crmsync.crm.base import Op, RecordResult, SendResult, field_map, send_singles
from crmsync.crm.credentials import TokenSource
from crmsync.crm.http import Headers, JsonClient, WriteWatch, base_of
from crmsync.crm.quota import DEFAULT_LIMITED_SECONDS, lower_keys, retry_after_seconds
from crmsync.errors import AuthFailed, CrmError, Permanent, RateLimited, Retryable
from crmsync.model import CONTACT_ATTRS

DEFAULT_FIELDS = {
    "email": "Email",
    "first_name": "FirstName",
    "last_name": "LastName",
    "company": "Company__c",
    "status": "Status__c",
}
MAX_BATCH = 200
# Per-record codes that a later retry can cure (row locks, maintenance).
RETRYABLE_CODES = frozenset(
    {"UNABLE_TO_LOCK_ROW", "SERVER_UNAVAILABLE", "REQUEST_RUNNING_TOO_LONG", "QUERY_TIMEOUT"}
)
# A delete answered with these means the record is already gone: success.
GONE_CODES = frozenset({"ENTITY_IS_DELETED", "NOT_FOUND", "INVALID_CROSS_REFERENCE_KEY"})


SALESFORCE_EXHAUSTED_SECONDS = 300.0  # org quota used up: look again in 5 min
_USAGE = re.compile(r"api-usage=(\d+)/(\d+)")


def is_limit_answer(status: int, body: Any) -> bool:
    """429, or Salesforce's 403 REQUEST_LIMIT_EXCEEDED."""
    return status == 429 or (status == 403 and "REQUEST_LIMIT_EXCEEDED" in str(body))


def quota_block(
    status: int, headers: Headers, body: Any = None, *, now: float | None = None
) -> float | None:
    """How long every worker should hold the connection back, or None: a limit
    answer for its ``Retry-After`` (else the default); any answer whose
    ``Sforce-Limit-Info`` says the org's allocation is spent."""
    h = lower_keys(headers)
    limited = is_limit_answer(status, body)
    if limited:
        wait = retry_after_seconds(h.get("retry-after"), now)
        if wait is not None:
            return wait
    m = _USAGE.search(h.get("sforce-limit-info", ""))
    if m and int(m.group(1)) >= int(m.group(2)):
        return SALESFORCE_EXHAUSTED_SECONDS
    return DEFAULT_LIMITED_SECONDS if limited else None


def _block(status: int, headers: Headers, body: Any) -> float | None:
    """``Sforce-Limit-Info`` on a success: pause only when the org's quota is spent."""
    return quota_block(status, headers, body)


def _wait(status: int, headers: Headers, body: Any) -> float:
    """REQUEST_LIMIT_EXCEEDED: ``Retry-After`` if given, else the shared default."""
    return quota_block(status, headers, body) or DEFAULT_LIMITED_SECONDS


def _first_error(body: Any) -> tuple[str | None, str | None]:
    """(errorCode, message) of ``[{"message","errorCode","fields"}]``."""
    if isinstance(body, list) and body and isinstance(body[0], dict):
        e = body[0]
        code = e.get("errorCode") or e.get("statusCode")
        return (str(code) if code else None), (str(e["message"]) if e.get("message") else None)
    if isinstance(body, dict):  # some gateways answer with one object
        code = body.get("errorCode") or body.get("error")
        msg = body.get("message") or body.get("error_description")
        return (str(code) if code else None), (str(msg) if msg else None)
    return None, None


def error_for(status: int, headers: Headers, body: Any) -> CrmError:
    """Map a whole-request failure onto crmsync's errors."""
    code, message = _first_error(body)
    text = message or f"HTTP {status} from Salesforce"
    if status == 401:
        return AuthFailed(text, status=status, code=code or "INVALID_SESSION_ID")
    if code == "REQUEST_LIMIT_EXCEEDED" or status == 429:
        return RateLimited(text, retry_after=_wait(status, headers, body), status=status, code=code)
    if status >= 500 or code in RETRYABLE_CODES:
        return Retryable(text, status=status, code=code)
    return Permanent(text, status=status, code=code)


def record_error(errors: Any) -> CrmError:
    """The error of one record in a collection result (``statusCode`` form)."""
    code, message = _first_error(errors)
    text = message or "Salesforce reported a failure without a message"
    if code in RETRYABLE_CODES:
        return Retryable(text, code=code)
    return Permanent(text, code=code)


def parse_upsert(op: Op, status: int, headers: Headers, body: Any) -> SendResult:
    """Answer to a single upsert by external id."""
    if status in (200, 201, 204):
        ext = body.get("id") if isinstance(body, dict) else None
        created = body.get("created") if isinstance(body, dict) else None
        if created is None:
            created = status == 201
        result = RecordResult(
            op.contact_id, True, external_id=ext or op.external_id, created=bool(created)
        )
        return SendResult([result], _block(status, headers, body))
    raise error_for(status, headers, body)


def parse_delete(op: Op, status: int, headers: Headers, body: Any) -> SendResult:
    """Answer to a single delete; 404 ENTITY_IS_DELETED / NOT_FOUND is already gone."""
    if status in (200, 204) or (status == 404 and _first_error(body)[0] in GONE_CODES):
        return SendResult(
            [RecordResult(op.contact_id, True, external_id=op.external_id)],
            _block(status, headers, body),
        )
    raise error_for(status, headers, body)


def parse_collection(
    ops: Sequence[Op], status: int, headers: Headers, body: Any, *, deleting: bool
) -> SendResult:
    """Per-record results of an sObject Collections call, in input order."""
    if status != 200:
        raise error_for(status, headers, body)
    if not isinstance(body, list) or len(body) != len(ops):
        # Without one result per record we cannot tell what happened; the
        # calls are idempotent, so trying again is safe.
        raise Retryable("Salesforce collection answer does not match the request", status=status)
    results: list[RecordResult] = []
    for op, item in zip(ops, body, strict=True):
        item = item if isinstance(item, dict) else {}
        errors = item.get("errors") or []
        if item.get("success"):
            ext = item.get("id") or op.external_id
            created = None if deleting else bool(item.get("created"))
            results.append(RecordResult(op.contact_id, True, external_id=ext, created=created))
        elif deleting and _first_error(errors)[0] in GONE_CODES:
            results.append(RecordResult(op.contact_id, True, external_id=op.external_id))
        else:
            results.append(RecordResult(op.contact_id, False, error=record_error(errors)))
    return SendResult(results, _block(status, headers, body))


class SalesforceAdapter(JsonClient):
    crm = "salesforce"
    max_batch = MAX_BATCH

    def __init__(
        self,
        *,
        base_url: str,
        token: str | TokenSource,
        settings: Mapping[str, Any],
        session: aiohttp.ClientSession,
    ) -> None:
        version = str(settings.get("api_version") or "v60.0")
        version = version if version.startswith("v") else f"v{version}"
        self.ext_field = str(settings.get("external_id_field") or "CrmSync_Id__c")
        self.fields = field_map(DEFAULT_FIELDS, settings.get("field_map"))
        super().__init__(token=token, settings=settings, session=session, base_url=base_url)
        root = f"{base_of(base_url)}/services/data/{quote(version, safe='.')}"
        self.sobject = f"{root}/sobjects/Contact"
        self.by_ext = f"{self.sobject}/{quote(self.ext_field, safe='')}"
        self.collection = f"{root}/composite/sobjects"
        self.collection_upsert = f"{self.collection}/Contact/{quote(self.ext_field, safe='')}"

    def _values(self, op: Op) -> dict[str, Any]:
        assert op.contact is not None, "upserts carry the contact"
        c = op.contact
        return {self.fields[a]: getattr(c, a) for a in CONTACT_ATTRS if a in self.fields}

    async def send(self, ops: Sequence[Op], watch: WriteWatch | None = None) -> SendResult:
        if not ops:
            return SendResult([])
        if ops[0].kind == "delete":
            return await self._delete(ops, watch)
        if len(ops) == 1:
            op = ops[0]
            url = f"{self.by_ext}/{quote(op.contact_id, safe='')}"
            return parse_upsert(op, *await self._call("PATCH", url, self._values(op), watch))
        records = [
            {"attributes": {"type": "Contact"}, self.ext_field: op.contact_id, **self._values(op)}
            for op in ops
        ]
        payload = {"allOrNone": False, "records": records}
        answer = await self._call("PATCH", self.collection_upsert, payload, watch)
        return parse_collection(ops, *answer, deleting=False)

    async def _delete_one(self, op: Op, watch: WriteWatch | None) -> SendResult:
        if op.external_id:
            url = f"{self.sobject}/{quote(op.external_id, safe='')}"
        else:
            # No Salesforce Id in the ledger (the create's answer was lost):
            # delete by our external id instead.
            url = f"{self.by_ext}/{quote(op.contact_id, safe='')}"
        return parse_delete(op, *await self._call("DELETE", url, None, watch))

    async def _delete(self, ops: Sequence[Op], watch: WriteWatch | None) -> SendResult:
        if len(ops) == 1:
            return await self._delete_one(ops[0], watch)
        known = [op for op in ops if op.external_id]
        unknown = [op for op in ops if not op.external_id]
        by_contact: dict[str, RecordResult] = {}
        blocks: list[float] = []
        if len(known) > 1:
            ids = ",".join(quote(op.external_id or "", safe="") for op in known)
            url = f"{self.collection}?ids={ids}&allOrNone=false"
            answer = await self._call("DELETE", url, None, watch)
            res = parse_collection(known, *answer, deleting=True)
            by_contact.update((r.contact_id, r) for r in res.results)
            blocks.extend(b for b in [res.block_for] if b)
        else:
            unknown = known + unknown
        await send_singles(unknown, partial(self._delete_one, watch=watch), by_contact, blocks)
        return SendResult([by_contact[op.contact_id] for op in ops], max(blocks, default=None))
