"""HubSpot CRM v3 adapter: batch upsert by our unique ``crmsync_id`` property.

Batch: ``POST /crm/v3/objects/contacts/batch/upsert`` (<= 100 inputs, 200 or
207 multi-status; results are not in input order, so they are matched by the
``crmsync_id`` property they echo and errors by their ``context.ids``) and
``POST .../batch/archive`` (204). Single: ``POST /crm/v3/objects/contacts``
(201), ``PATCH .../{id}`` and ``DELETE .../{id}``. A create retried after a
lost response hits the unique ``crmsync_id`` (409 CONFLICT): the adapter then
updates the contact by ``crmsync_id``, so the retry neither duplicates nor
loses the latest fields.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any
from urllib.parse import quote

import aiohttp

from crmsync import clock
from crmsync.crm.base import Op, RecordResult, SendResult, field_map, send_singles
from crmsync.crm.credentials import TokenSource
from crmsync.crm.http import Headers, JsonClient, WriteWatch, base_of
from crmsync.crm.quota import (
    DEFAULT_LIMITED_SECONDS,
    header_int,
    lower_keys,
    retry_after_seconds,
    seconds_to_midnight_utc,
)
from crmsync.errors import AuthFailed, CrmError, Permanent, RateLimited, Retryable
from crmsync.model import CONTACT_ATTRS

DEFAULT_PROPERTIES = {
    "email": "email",
    "first_name": "firstname",
    "last_name": "lastname",
    "company": "company",
    "status": "crmsync_status",
}
MAX_BATCH = 100
RETRYABLE_CATEGORIES = frozenset(
    {"RATE_LIMITS", "INTERNAL_ERROR", "TIMEOUT", "SERVICE_UNAVAILABLE"}
)


def quota_block(
    status: int, headers: Headers, body: Any = None, *, now: float | None = None
) -> float | None:
    """How long every worker should hold the connection back, or None.

    A 429 always blocks: for ``Retry-After`` if given, else until midnight for
    the daily limit, else for the rate-limit interval, else the default. A
    success blocks only when the headers say the quota is spent; with a full
    rolling window, for one request's share of the interval (our own limiter
    fills the window again)."""
    h = lower_keys(headers)
    limited = status == 429
    if limited:
        wait = retry_after_seconds(h.get("retry-after"), now)
        if wait is not None:
            return wait
    if header_int(h.get("x-hubspot-ratelimit-daily-remaining")) == 0 or (
        limited and "DAILY" in str(body)
    ):
        return seconds_to_midnight_utc(clock.now() if now is None else now)
    interval = header_int(h.get("x-hubspot-ratelimit-interval-milliseconds"))
    if limited:
        return interval / 1000.0 if interval else DEFAULT_LIMITED_SECONDS
    remaining = header_int(h.get("x-hubspot-ratelimit-remaining"))
    if remaining == 0 and interval:
        most = header_int(h.get("x-hubspot-ratelimit-max")) or 1
        return interval / 1000.0 / max(1, most)
    return None


def _block(status: int, headers: Headers, body: Any) -> float | None:
    """Quota headers on a success: pause only when the CRM says the quota is spent."""
    return quota_block(status, headers, body)


def _wait(status: int, headers: Headers, body: Any) -> float:
    """A 429: ``Retry-After``, else DAILY until midnight UTC, else the window."""
    wait = quota_block(status, headers, body)
    return DEFAULT_LIMITED_SECONDS if wait is None else wait


def _message(body: Any) -> tuple[str | None, str | None]:
    """(category or policy, message) of ``{"status":"error","message","category",...}``."""
    if not isinstance(body, dict):
        return None, None
    code = body.get("category") or body.get("errorType")
    msg = body.get("message")
    return (str(code) if code else None), (str(msg) if msg else None)


def error_for(status: int, headers: Headers, body: Any) -> CrmError:
    """Map a whole-request failure onto crmsync's errors."""
    code, message = _message(body)
    text = message or f"HTTP {status} from HubSpot"
    if status == 401:
        return AuthFailed(text, status=status, code=code or "INVALID_AUTHENTICATION")
    if status == 429:
        policy = body.get("policyName") if isinstance(body, dict) else None
        return RateLimited(
            text,
            retry_after=_wait(status, headers, body),
            status=status,
            code=str(policy or code or "RATE_LIMIT"),
        )
    if status >= 500:
        return Retryable(text, status=status, code=code)
    return Permanent(text, status=status, code=code)


def record_error(err: Mapping[str, Any]) -> CrmError:
    code, message = _message(err)
    text = message or "HubSpot reported a failure without a message"
    if code in RETRYABLE_CATEGORIES:
        return Retryable(text, code=code)
    return Permanent(text, code=code)


def _ok(op: Op, body: Any, created: bool | None) -> RecordResult:
    ext = str(body["id"]) if isinstance(body, dict) and body.get("id") else op.external_id
    return RecordResult(op.contact_id, True, external_id=ext, created=created)


def parse_batch_upsert(
    ops: Sequence[Op],
    status: int,
    headers: Headers,
    body: Any,
    *,
    id_property: str,
    email_property: str | None = "email",
) -> SendResult:
    """Per-record results of ``batch/upsert`` (200 COMPLETE or 207 with errors).

    Results are matched by the ``crmsync_id`` they echo (else by email), errors
    by ``context.ids``; what stays ambiguous is retried, never guessed.
    """
    if status not in (200, 201, 207):
        raise error_for(status, headers, body)
    if not isinstance(body, dict):
        raise Retryable("HubSpot batch answer is not a JSON object", status=status)
    by_email = {}
    if email_property:
        by_email = {op.contact.email.lower(): op.contact_id for op in ops if op.contact}
    done: dict[str, RecordResult] = {}
    unkeyed: list[dict[str, Any]] = []
    for item in body.get("results") or []:
        props = item.get("properties") or {}
        key = props.get(id_property)
        if key is None and email_property and props.get(email_property):
            key = by_email.get(str(props[email_property]).lower())
        if key is None:
            unkeyed.append(item)
            continue
        done[str(key)] = RecordResult(
            str(key), True, external_id=str(item.get("id")), created=bool(item.get("new"))
        )
    failed: dict[str, CrmError] = {}
    loose: list[CrmError] = []
    for err in body.get("errors") or []:
        context = err.get("context") or {}
        ids = context.get("ids") or context.get(id_property) or err.get("objectIds") or []
        error = record_error(err)
        if not ids:
            loose.append(error)
        for i in ids:
            failed[str(i)] = error
    pending = [op for op in ops if op.contact_id not in done and op.contact_id not in failed]
    if len(pending) == 1 and len(unkeyed) == 1 and not loose:
        # One record left and one anonymous answer: they belong together.
        done[pending[0].contact_id] = _ok(pending[0], unkeyed[0], bool(unkeyed[0].get("new")))
    elif len(pending) == 1 and len(loose) == 1 and not unkeyed:
        failed[pending[0].contact_id] = loose[0]
    elif pending and not loose and not failed and len(unkeyed) == len(pending):
        # Every record succeeded but the answer does not say which id is whose:
        # success without the CRM id (later updates and deletes go by crmsync_id).
        for op in pending:
            done[op.contact_id] = RecordResult(op.contact_id, True, op.external_id, None)
    results: list[RecordResult] = []
    for op in ops:
        if op.contact_id in done:
            r = done[op.contact_id]
            results.append(RecordResult(op.contact_id, True, r.external_id, r.created))
        elif op.contact_id in failed:
            results.append(RecordResult(op.contact_id, False, error=failed[op.contact_id]))
        else:
            # Not mentioned by the answer: the upsert is idempotent, try again.
            missing = Retryable("HubSpot batch answer did not mention this record", status=status)
            results.append(RecordResult(op.contact_id, False, error=missing))
    return SendResult(results, _block(status, headers, body))


def parse_archive(ops: Sequence[Op], status: int, headers: Headers, body: Any) -> SendResult:
    """``batch/archive`` answers 204 whether or not the ids still exist."""
    if 200 <= status < 300:
        ok = [RecordResult(op.contact_id, True, external_id=op.external_id) for op in ops]
        return SendResult(ok, _block(status, headers, body))
    raise error_for(status, headers, body)


def parse_single(op: Op, status: int, headers: Headers, body: Any) -> SendResult:
    """Answer to a single create (201) or update (200)."""
    if 200 <= status < 300:
        return SendResult([_ok(op, body, status == 201)], _block(status, headers, body))
    raise error_for(status, headers, body)


def parse_delete(op: Op, status: int, headers: Headers, body: Any) -> SendResult:
    """204 deleted; 404 already gone, which is what we wanted."""
    if 200 <= status < 300 or status == 404:
        ok = RecordResult(op.contact_id, True, external_id=op.external_id)
        return SendResult([ok], _block(status, headers, body))
    raise error_for(status, headers, body)


class HubSpotAdapter(JsonClient):
    crm = "hubspot"
    max_batch = MAX_BATCH

    def __init__(
        self,
        *,
        base_url: str,
        token: str | TokenSource,
        settings: Mapping[str, Any],
        session: aiohttp.ClientSession,
    ) -> None:
        self.id_property = str(settings.get("id_property") or "crmsync_id")
        self.props = field_map(DEFAULT_PROPERTIES, settings.get("field_map"))
        super().__init__(token=token, settings=settings, session=session, base_url=base_url)
        self.contacts = f"{base_of(base_url)}/crm/v3/objects/contacts"
        self.by_key = f"?idProperty={quote(self.id_property, safe='')}"

    def _properties(self, op: Op) -> dict[str, str]:
        assert op.contact is not None, "upserts carry the contact"
        c = op.contact
        # HubSpot clears a property with "", not null.
        props = {self.props[a]: getattr(c, a) or "" for a in CONTACT_ATTRS if a in self.props}
        props[self.id_property] = op.contact_id
        return props

    def _url(self, record: str) -> str:
        return f"{self.contacts}/{quote(record, safe='')}"

    async def send(self, ops: Sequence[Op], watch: WriteWatch | None = None) -> SendResult:
        if not ops:
            return SendResult([])
        if ops[0].kind == "delete":
            return await self._delete(ops, watch)
        if len(ops) == 1:
            return await self._upsert_one(ops[0], watch)
        key = self.id_property
        inputs = [
            {"id": op.contact_id, "idProperty": key, "properties": self._properties(op)}
            for op in ops
        ]
        answer = await self._call(
            "POST", f"{self.contacts}/batch/upsert", {"inputs": inputs}, watch
        )
        return parse_batch_upsert(
            ops, *answer, id_property=self.id_property, email_property=self.props.get("email")
        )

    async def _upsert_one(self, op: Op, watch: WriteWatch | None) -> SendResult:
        payload = {"properties": self._properties(op)}
        if op.kind == "update":
            url = self._url(op.external_id) if op.external_id else self._keyed(op)
            return parse_single(op, *await self._call("PATCH", url, payload, watch))
        status, headers, body = await self._call("POST", self.contacts, payload, watch)
        if not self._is_conflict(status, body):
            return parse_single(op, status, headers, body)
        # 409: a contact with this crmsync_id (our earlier create whose answer
        # was lost) or with this email exists. Update ours by crmsync_id; if
        # there is none, the email belongs to someone else: a real conflict.
        conflict = error_for(status, headers, body)
        s2, h2, b2 = await self._call("PATCH", self._keyed(op), payload, watch)
        if s2 == 404:
            raise conflict
        res = parse_single(op, s2, h2, b2)
        return SendResult([RecordResult(op.contact_id, True, res.results[0].external_id, False)])

    def _is_conflict(self, status: int, body: Any) -> bool:
        if status == 409:
            return True
        # A unique-property clash may also come back as a 400 naming the property.
        message = _message(body)[1] or ""
        return status == 400 and self.id_property in message and "already" in message

    def _keyed(self, op: Op) -> str:
        return self._url(op.contact_id) + self.by_key

    async def _delete_one(self, op: Op, watch: WriteWatch | None) -> SendResult:
        ext = op.external_id
        if not ext:
            # No HubSpot id in the ledger (the create's answer was lost): look
            # the contact up by crmsync_id first; not found = nothing to delete.
            status, headers, body = await self._call("GET", self._keyed(op), None, watch)
            if status == 404:
                return parse_delete(op, status, headers, body)
            found = parse_single(op, status, headers, body).results[0].external_id
            if not found:
                raise Retryable("HubSpot lookup by crmsync_id returned no id", status=status)
            op = Op(op.kind, op.contact_id, None, found)
            ext = found
        return parse_delete(op, *await self._call("DELETE", self._url(ext), None, watch))

    async def _delete(self, ops: Sequence[Op], watch: WriteWatch | None) -> SendResult:
        if len(ops) == 1:
            return await self._delete_one(ops[0], watch)
        known = [op for op in ops if op.external_id]
        unknown = [op for op in ops if not op.external_id]
        by_contact: dict[str, RecordResult] = {}
        blocks: list[float] = []
        if known:
            inputs = [{"id": op.external_id} for op in known]
            answer = await self._call(
                "POST", f"{self.contacts}/batch/archive", {"inputs": inputs}, watch
            )
            res = parse_archive(known, *answer)
            by_contact.update((r.contact_id, r) for r in res.results)
            blocks.extend(b for b in [res.block_for] if b)
        await send_singles(unknown, partial(self._delete_one, watch=watch), by_contact, blocks)
        return SendResult([by_contact[op.contact_id] for op in ops], max(blocks, default=None))
