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

from crmsync.crm.answer import flag, malformed, message, obj, record_id, seq
from crmsync.crm.base import Op, RecordResult, SendResult, field_map, send_singles
from crmsync.crm.credentials import TokenSource
from crmsync.crm.http import Headers, JsonClient, WriteWatch, base_of
from crmsync.crm.quota import (
    DEFAULT_LIMITED_SECONDS,
    MAX_BLOCK_SECONDS,
    Usage,
    bounded,
    lower_keys,
    retry_after_seconds,
)
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
CRM = "Salesforce"
# Per-record codes that a later retry can cure (row locks, maintenance).
RETRYABLE_CODES = frozenset(
    {"UNABLE_TO_LOCK_ROW", "SERVER_UNAVAILABLE", "REQUEST_RUNNING_TOO_LONG", "QUERY_TIMEOUT"}
)
# A delete answered with these means the record is already gone: success.
GONE_CODES = frozenset({"ENTITY_IS_DELETED", "NOT_FOUND", "INVALID_CROSS_REFERENCE_KEY"})


SALESFORCE_EXHAUSTED_SECONDS = 300.0  # org quota used up: look again in 5 min
_USAGE = re.compile(r"api-usage=(\d+)/(\d+)")


def _first_error(body: Any) -> tuple[str | None, str | None]:
    """(errorCode, message) of ``[{"message","errorCode","fields"}]`` (or of one
    such object: some gateways answer with one)."""
    items = seq(body)
    e = obj(items[0]) if items else obj(body)
    if e is None:
        return None, None
    code = message(e.get("errorCode")) or message(e.get("statusCode")) or message(e.get("error"))
    text = message(e.get("message")) or message(e.get("error_description"))
    return code, text


def usage_of(headers: Headers) -> Usage | None:
    """``Sforce-Limit-Info: api-usage=used/max``: the org's rolling 24-hour use."""
    m = _USAGE.search(lower_keys(headers).get("sforce-limit-info") or "")
    return Usage(int(m.group(1)), int(m.group(2))) if m is not None else None


def limits_usage(status: int, body: Any) -> Usage | None:
    """``GET /limits``: ``DailyApiRequests {Max, Remaining}`` as used/max."""
    b = obj(body) if status == 200 else None
    daily = obj(b.get("DailyApiRequests")) if b is not None else None
    if daily is None:
        return None
    most, left = daily.get("Max"), daily.get("Remaining")
    if isinstance(most, bool) or isinstance(left, bool):
        return None
    if not isinstance(most, int) or not isinstance(left, int) or most <= 0:
        return None
    return Usage(max(0, most - left), most)


def is_limit_answer(status: int, body: Any) -> bool:
    """429, or Salesforce's 403 REQUEST_LIMIT_EXCEEDED."""
    return status == 429 or (status == 403 and _first_error(body)[0] == "REQUEST_LIMIT_EXCEEDED")


def quota_block(
    status: int,
    headers: Headers,
    body: Any = None,
    *,
    now: float | None = None,
    most: float = MAX_BLOCK_SECONDS,
) -> float | None:
    """How long every worker should hold the connection back, or None: a limit
    answer for its ``Retry-After`` (else the default); any answer whose
    ``Sforce-Limit-Info`` says the org's allocation is spent. Bounded by
    ``quota.bounded``."""
    h = lower_keys(headers)
    limited = is_limit_answer(status, body)
    m = _USAGE.search(h.get("sforce-limit-info") or "")
    spent = m is not None and int(m.group(1)) >= int(m.group(2))
    window = SALESFORCE_EXHAUSTED_SECONDS if spent else DEFAULT_LIMITED_SECONDS
    if limited:
        return bounded(retry_after_seconds(h.get("retry-after"), now), window=window, most=most)
    return bounded(None, window=window, most=most) if spent else None


def error_for(
    status: int, headers: Headers, body: Any, *, most: float = MAX_BLOCK_SECONDS
) -> CrmError:
    """Map a whole-request failure onto crmsync's errors."""
    code, text = _first_error(body)
    if text is None:
        text = malformed(CRM, status, "without an error message", body).message
    if status == 401:
        return AuthFailed(text, status=status, code=code or "INVALID_SESSION_ID")
    if code == "REQUEST_LIMIT_EXCEEDED" or status == 429:
        wait = quota_block(status, headers, body, most=most) or DEFAULT_LIMITED_SECONDS
        return RateLimited(text, retry_after=wait, status=status, code=code)
    if status >= 500 or status == 408 or code in RETRYABLE_CODES:
        return Retryable(text, status=status, code=code)
    if 200 <= status < 400:  # a success status that is not this request's success
        return malformed(CRM, status, "unexpectedly", body)
    return Permanent(text, status=status, code=code)


def record_error(errors: Any) -> CrmError:
    """The error of one record in a collection result (``statusCode`` form)."""
    code, text = _first_error(errors)
    text = text or "Salesforce reported a failure without a message"
    if code in RETRYABLE_CODES:
        return Retryable(text, code=code)
    return Permanent(text, code=code)


def parse_upsert(
    op: Op, status: int, headers: Headers, body: Any, *, most: float = MAX_BLOCK_SECONDS
) -> SendResult:
    """Answer to a single upsert by external id: 201/200 with the record's id; 204
    (API versions before 46.0) only confirms an update of a record whose id we know."""
    block = quota_block(status, headers, body, most=most)
    if status in (200, 201):
        b = obj(body)
        ext = record_id(b.get("id")) if b is not None else None
        if b is None or ext is None or b.get("success", True) is not True:
            raise malformed(CRM, status, "without the record's id", body)
        created = flag(b.get("created"))
        created = status == 201 if created is None else created
        return SendResult([RecordResult(op.contact_id, True, ext, created)], block)
    if status == 204 and op.external_id:
        return SendResult([RecordResult(op.contact_id, True, op.external_id, False)], block)
    raise error_for(status, headers, body, most=most)


def parse_delete(
    op: Op, status: int, headers: Headers, body: Any, *, most: float = MAX_BLOCK_SECONDS
) -> SendResult:
    """Answer to a single delete; 404 ENTITY_IS_DELETED / NOT_FOUND is already gone."""
    if status in (200, 204) or (status == 404 and _first_error(body)[0] in GONE_CODES):
        return SendResult(
            [RecordResult(op.contact_id, True, external_id=op.external_id)],
            quota_block(status, headers, body, most=most),
        )
    raise error_for(status, headers, body, most=most)


def parse_collection(
    ops: Sequence[Op],
    status: int,
    headers: Headers,
    body: Any,
    *,
    deleting: bool,
    most: float = MAX_BLOCK_SECONDS,
) -> SendResult:
    """Per-record results of an sObject Collections call, in input order. An item
    that does not say what happened to its record fails that record (Malformed);
    an answer that is not one item per record fails every record."""
    if status != 200:
        raise error_for(status, headers, body, most=most)
    items = seq(body)
    if items is None or len(items) != len(ops):
        # Without one result per record we cannot tell what happened; the
        # calls are idempotent, so trying again is safe.
        raise malformed(CRM, status, "with a collection that does not list each record", body)
    results: list[RecordResult] = []
    for op, raw in zip(ops, items, strict=True):
        item = obj(raw)
        success = flag(item.get("success")) if item is not None else None
        ext = record_id(item.get("id")) if item is not None else None
        if item is not None and success is True:
            if deleting and (ext is None or op.external_id is None or ext == op.external_id):
                results.append(RecordResult(op.contact_id, True, external_id=op.external_id))
                continue
            if not deleting and ext is not None:
                created = flag(item.get("created"))
                results.append(RecordResult(op.contact_id, True, ext, bool(created)))
                continue
        elif item is not None and success is False:
            errors = item.get("errors")
            if deleting and _first_error(errors)[0] in GONE_CODES:
                results.append(RecordResult(op.contact_id, True, external_id=op.external_id))
            else:
                results.append(RecordResult(op.contact_id, False, error=record_error(errors)))
            continue
        why = "with a collection item that does not confirm this record"
        results.append(RecordResult(op.contact_id, False, error=malformed(CRM, status, why, raw)))
    return SendResult(results, quota_block(status, headers, body, most=most))


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
        self.limits_url = f"{root}/limits"

    def read_usage(self, headers: Headers) -> Usage | None:
        return usage_of(headers)

    async def daily_usage(self) -> Usage | None:
        """The org's allocation and use now (``/limits``), or None when not told."""
        status, _, body = await self._call("GET", self.limits_url)
        return limits_usage(status, body)

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
            answer = await self._call("PATCH", url, self._values(op), watch)
            return parse_upsert(op, *answer, most=self.max_block)
        records = [
            {"attributes": {"type": "Contact"}, self.ext_field: op.contact_id, **self._values(op)}
            for op in ops
        ]
        payload = {"allOrNone": False, "records": records}
        answer = await self._call("PATCH", self.collection_upsert, payload, watch)
        return parse_collection(ops, *answer, deleting=False, most=self.max_block)

    async def _delete_one(self, op: Op, watch: WriteWatch | None) -> SendResult:
        if op.external_id:
            url = f"{self.sobject}/{quote(op.external_id, safe='')}"
        else:
            # No Salesforce Id in the ledger (the create's answer was lost):
            # delete by our external id instead.
            url = f"{self.by_ext}/{quote(op.contact_id, safe='')}"
        answer = await self._call("DELETE", url, None, watch)
        return parse_delete(op, *answer, most=self.max_block)

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
            res = parse_collection(known, *answer, deleting=True, most=self.max_block)
            by_contact.update((r.contact_id, r) for r in res.results)
            blocks.extend(b for b in [res.block_for] if b)
        else:
            unknown = known + unknown
        await send_singles(unknown, partial(self._delete_one, watch=watch), by_contact, blocks)
        return SendResult([by_contact[op.contact_id] for op in ops], max(blocks, default=None))
