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
from crmsync.crm.answer import flag, malformed, message, obj, record_id, seq
from crmsync.crm.base import Op, RecordResult, SendResult, field_map, send_singles
from crmsync.crm.credentials import TokenSource
from crmsync.crm.http import Headers, JsonClient, WriteWatch, base_of
from crmsync.crm.quota import (
    DEFAULT_LIMITED_SECONDS,
    MAX_BLOCK_SECONDS,
    Usage,
    bounded,
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
CRM = "HubSpot"
ID_PROPERTY = "crmsync_id"
RETRYABLE_CATEGORIES = frozenset(
    {"RATE_LIMITS", "INTERNAL_ERROR", "TIMEOUT", "SERVICE_UNAVAILABLE"}
)


def _policy(body: Any) -> str | None:
    b = obj(body)
    return message(b.get("policyName")) if b is not None else None


def quota_block(
    status: int,
    headers: Headers,
    body: Any = None,
    *,
    now: float | None = None,
    most: float = MAX_BLOCK_SECONDS,
) -> float | None:
    """How long every worker should hold the connection back, or None.

    A 429 always blocks: for ``Retry-After`` if given, else for its window:
    until midnight for the daily limit, else the rate-limit interval, else the
    default. A success blocks only when the headers say the quota is spent;
    with a full rolling window, for one request's share of the interval (our
    own limiter fills the window again). Bounded by ``quota.bounded``."""
    h = lower_keys(headers)
    t = clock.now() if now is None else now
    limited = status == 429
    daily = header_int(h.get("x-hubspot-ratelimit-daily-remaining")) == 0 or (
        limited and _policy(body) == "DAILY"
    )
    interval = header_int(h.get("x-hubspot-ratelimit-interval-milliseconds"))
    if daily:
        window = seconds_to_midnight_utc(t)
    elif interval is not None and interval > 0:
        window = interval / 1000.0
    else:
        window = DEFAULT_LIMITED_SECONDS
    if limited:
        return bounded(retry_after_seconds(h.get("retry-after"), t), window=window, most=most)
    if daily:
        return bounded(None, window=window, most=most)
    remaining = header_int(h.get("x-hubspot-ratelimit-remaining"))
    if remaining == 0 and interval is not None and interval > 0:
        share = window / max(1, header_int(h.get("x-hubspot-ratelimit-max")) or 1)
        return bounded(share, window=share, most=most)
    return None


def usage_of(headers: Headers) -> Usage | None:
    """``X-HubSpot-RateLimit-Daily``/``-Daily-Remaining`` as used/max of the portal's
    day, and ``-Max`` of a 10-second ``-Interval-Milliseconds`` as its burst."""
    h = lower_keys(headers)
    most = header_int(h.get("x-hubspot-ratelimit-daily"))
    left = header_int(h.get("x-hubspot-ratelimit-daily-remaining"))
    burst = header_int(h.get("x-hubspot-ratelimit-max"))
    interval = header_int(h.get("x-hubspot-ratelimit-interval-milliseconds"))
    if burst is not None and (interval != 10_000 or burst <= 0):
        burst = None  # a limit of another window (or none) says nothing of the tier
    if most is None or left is None or most <= 0 or left < 0:
        return Usage(burst=burst) if burst is not None else None
    return Usage(max(0, most - left), most, burst)


def _message(body: Any) -> tuple[str | None, str | None]:
    """(category or policy, message) of ``{"status":"error","message","category",...}``."""
    b = obj(body)
    if b is None:
        return None, message(body)  # e.g. one of ``errors: ["boom"]``
    code = message(b.get("category")) or message(b.get("errorType"))
    return code, message(b.get("message"))


def error_for(
    status: int, headers: Headers, body: Any, *, most: float = MAX_BLOCK_SECONDS
) -> CrmError:
    """Map a whole-request failure onto crmsync's errors."""
    code, text = _message(body)
    if text is None:
        text = malformed(CRM, status, "without an error message", body).message
    if status == 401:
        return AuthFailed(text, status=status, code=code or "INVALID_AUTHENTICATION")
    if status == 429:
        wait = quota_block(status, headers, body, most=most) or DEFAULT_LIMITED_SECONDS
        code = _policy(body) or code or "RATE_LIMIT"
        return RateLimited(text, retry_after=wait, status=status, code=code)
    if status >= 500 or status == 408:
        return Retryable(text, status=status, code=code)
    if 200 <= status < 400:  # a success status that is not this request's success
        return malformed(CRM, status, "unexpectedly", body)
    return Permanent(text, status=status, code=code)


def record_error(err: Any) -> CrmError:
    code, text = _message(err)
    text = text or "HubSpot reported a failure without a message"
    if code in RETRYABLE_CATEGORIES:
        return Retryable(text, code=code)
    return Permanent(text, code=code)


def _named(item: dict[str, Any], id_property: str) -> str | None:
    """The contact id a result names by our property (None: it names none)."""
    props = obj(item.get("properties"))
    return message(props.get(id_property)) if props is not None else None


def parse_batch_upsert(
    ops: Sequence[Op],
    status: int,
    headers: Headers,
    body: Any,
    *,
    id_property: str = ID_PROPERTY,
    email_property: str | None = "email",
    most: float = MAX_BLOCK_SECONDS,
) -> SendResult:
    """Per-record results of ``batch/upsert`` (200 COMPLETE or 207 with errors).

    A result confirms a record when it carries a HubSpot id and names the record
    by the ``crmsync_id`` it echoes (else by email); errors are matched by their
    ``context.ids``. A record the answer does not confirm is retried (Malformed),
    never guessed: the upsert is idempotent.
    """
    if status not in (200, 201, 207):
        raise error_for(status, headers, body, most=most)
    b = obj(body)
    if b is None:
        raise malformed(CRM, status, "with a batch answer that is not a JSON object", body)
    by_email: dict[str, str] = {}
    if email_property:
        by_email = {op.contact.email.lower(): op.contact_id for op in ops if op.contact}
    wanted = {op.contact_id for op in ops}
    done: dict[str, RecordResult] = {}
    for raw in seq(b.get("results")) or []:
        item = obj(raw)
        ext = record_id(item.get("id")) if item is not None else None
        if item is None or ext is None:
            continue
        key = _named(item, id_property)
        if key is None and email_property:
            props = obj(item.get("properties")) or {}
            email = message(props.get(email_property))
            key = by_email.get(email.lower()) if email else None
        if key in wanted:
            done[key] = RecordResult(key, True, ext, flag(item.get("new")))
    failed: dict[str, CrmError] = {}
    loose: list[CrmError] = []
    for raw in seq(b.get("errors")) or []:
        err = obj(raw) or {}
        context = obj(err.get("context")) or {}
        ids = seq(context.get("ids")) or seq(context.get(id_property)) or []
        ids += seq(err.get("objectIds")) or []
        error = record_error(raw)
        named = [str(i) for i in ids if isinstance(i, str | int) and str(i) in wanted]
        if not named:
            loose.append(error)
        for i in named:
            failed[i] = error
    pending = [op for op in ops if op.contact_id not in done and op.contact_id not in failed]
    if len(pending) == 1 and len(loose) == 1:
        # One record left and one error naming nobody: they belong together.
        failed[pending[0].contact_id] = loose[0]
    results: list[RecordResult] = []
    for op in ops:
        if op.contact_id in done:
            results.append(done[op.contact_id])
        elif op.contact_id in failed:
            results.append(RecordResult(op.contact_id, False, error=failed[op.contact_id]))
        else:
            why = "with a batch answer that does not confirm this record"
            results.append(RecordResult(op.contact_id, False, error=malformed(CRM, status, why, b)))
    return SendResult(results, quota_block(status, headers, body, most=most))


def parse_archive(
    ops: Sequence[Op], status: int, headers: Headers, body: Any, *, most: float = MAX_BLOCK_SECONDS
) -> SendResult:
    """``batch/archive`` answers 204 whether or not the ids still exist."""
    if status in (200, 204):
        ok = [RecordResult(op.contact_id, True, external_id=op.external_id) for op in ops]
        return SendResult(ok, quota_block(status, headers, body, most=most))
    raise error_for(status, headers, body, most=most)


def parse_single(
    op: Op,
    status: int,
    headers: Headers,
    body: Any,
    *,
    id_property: str = ID_PROPERTY,
    most: float = MAX_BLOCK_SECONDS,
) -> SendResult:
    """Answer to a single create (201), update or lookup (200): the contact with its
    HubSpot id, not naming another contact by ``crmsync_id``."""
    if status in (200, 201):
        b = obj(body)
        ext = record_id(b.get("id")) if b is not None else None
        if b is None or ext is None:
            raise malformed(CRM, status, "without the contact's id", body)
        named = _named(b, id_property)
        if named is not None and named != op.contact_id:
            raise malformed(CRM, status, "naming another contact", body)
        result = RecordResult(op.contact_id, True, ext, status == 201)
        return SendResult([result], quota_block(status, headers, body, most=most))
    raise error_for(status, headers, body, most=most)


def parse_delete(
    op: Op, status: int, headers: Headers, body: Any, *, most: float = MAX_BLOCK_SECONDS
) -> SendResult:
    """204 deleted; 404 already gone, which is what we wanted."""
    if status in (200, 204, 404):
        ok = RecordResult(op.contact_id, True, external_id=op.external_id)
        return SendResult([ok], quota_block(status, headers, body, most=most))
    raise error_for(status, headers, body, most=most)


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
        self.id_property = str(settings.get("id_property") or ID_PROPERTY)
        self.props = field_map(DEFAULT_PROPERTIES, settings.get("field_map"))
        super().__init__(token=token, settings=settings, session=session, base_url=base_url)
        self.contacts = f"{base_of(base_url)}/crm/v3/objects/contacts"
        key = quote(self.id_property, safe="")
        self.by_key = f"?idProperty={key}"
        self.lookup_key = f"?idProperty={key}&properties={key}"

    def read_usage(self, headers: Headers) -> Usage | None:
        return usage_of(headers)

    def _properties(self, op: Op) -> dict[str, str]:
        assert op.contact is not None, "upserts carry the contact"
        c = op.contact
        # HubSpot clears a property with "", not null.
        props = {self.props[a]: getattr(c, a) or "" for a in CONTACT_ATTRS if a in self.props}
        props[self.id_property] = op.contact_id
        return props

    def _url(self, record: str) -> str:
        return f"{self.contacts}/{quote(record, safe='')}"

    def _keyed(self, op: Op) -> str:
        return self._url(op.contact_id) + self.by_key

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
            ops,
            *answer,
            id_property=self.id_property,
            email_property=self.props.get("email"),
            most=self.max_block,
        )

    def _single(self, op: Op, answer: tuple[int, Headers, Any]) -> SendResult:
        return parse_single(op, *answer, id_property=self.id_property, most=self.max_block)

    async def _upsert_one(self, op: Op, watch: WriteWatch | None) -> SendResult:
        payload = {"properties": self._properties(op)}
        if op.kind == "update":
            url = self._url(op.external_id) if op.external_id else self._keyed(op)
            answer = await self._call("PATCH", url, payload, watch)
            if answer[0] != 404 or not op.external_id:
                return self._single(op, answer)
            # The record the ledger names is gone (our delete whose outcome was
            # never recorded, or someone's in HubSpot): the contact lives here,
            # so it is created again, as a Salesforce upsert would.
            op = Op("create", op.contact_id, op.contact, None, True)
        if op.maybe_exists:
            # A single create is not an upsert: when an earlier attempt may have
            # created the contact, find it by crmsync_id and update it instead.
            found = await self._lookup(op, watch)
            if found is not None:
                answer = await self._call("PATCH", self._url(found), payload, watch)
                return _updated(self._single(op, answer))
        status, headers, body = await self._call("POST", self.contacts, payload, watch)
        if not self._is_conflict(status, body):
            return self._single(op, (status, headers, body))
        # 409: a contact with this crmsync_id (our earlier create whose answer
        # was lost) or with this email exists. Update ours by crmsync_id; if
        # there is none, the email belongs to someone else: a real conflict.
        conflict = error_for(status, headers, body, most=self.max_block)
        answer = await self._call("PATCH", self._keyed(op), payload, watch)
        if answer[0] == 404:
            raise conflict
        return _updated(self._single(op, answer))

    async def _lookup(self, op: Op, watch: WriteWatch | None) -> str | None:
        """The HubSpot id of the contact whose crmsync_id is ours (None: there is none)."""
        url = self._url(op.contact_id) + self.lookup_key
        status, headers, body = await self._call("GET", url, None, watch)
        if status == 404:
            return None
        return self._single(op, (status, headers, body)).results[0].external_id

    def _is_conflict(self, status: int, body: Any) -> bool:
        if status == 409:
            return True
        # A unique-property clash may also come back as a 400 naming the property.
        text = _message(body)[1] or ""
        return status == 400 and self.id_property in text and "already" in text

    async def _delete_one(self, op: Op, watch: WriteWatch | None) -> SendResult:
        if not op.external_id:
            # No HubSpot id in the ledger (the create's answer was lost, or its
            # outcome was never recorded): look the contact up by crmsync_id
            # first; not found = nothing to delete.
            found = await self._lookup(op, watch)
            if found is None:
                return SendResult([RecordResult(op.contact_id, True)])
            op = Op(op.kind, op.contact_id, None, found)
        assert op.external_id is not None
        answer = await self._call("DELETE", self._url(op.external_id), None, watch)
        return parse_delete(op, *answer, most=self.max_block)

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
            res = parse_archive(known, *answer, most=self.max_block)
            by_contact.update((r.contact_id, r) for r in res.results)
            blocks.extend(b for b in [res.block_for] if b)
        await send_singles(unknown, partial(self._delete_one, watch=watch), by_contact, blocks)
        return SendResult([by_contact[op.contact_id] for op in ops], max(blocks, default=None))


def _updated(res: SendResult) -> SendResult:
    """An answer to the update that stood in for a create: not a new record."""
    r = res.results[0]
    return SendResult([RecordResult(r.contact_id, True, r.external_id, False)], res.block_for)
