"""HubSpot CRM v3 adapter: batch upsert by our unique ``crmsync_id`` property.

Batch: ``POST /crm/v3/objects/contacts/batch/upsert`` (<= 100 inputs, 200 or
207 multi-status; results are not in input order, so they are matched by the
``crmsync_id`` property they echo and errors by their ``context.ids``) and
``POST .../batch/archive`` (204). Single: ``POST /crm/v3/objects/contacts``
(201), ``PATCH .../{id}`` and ``DELETE .../{id}``. A create retried after a
lost response hits the unique ``crmsync_id`` (409 CONFLICT): the adapter then
updates the contact by ``crmsync_id``, so the retry neither duplicates nor
loses the latest fields.

Existing records (``match=email``): HubSpot keeps one contact per email, so a
create of a contact whose email it holds is refused, ``409 Contact already
exists. Existing ID: <id>`` (single create, a batch upsert's per-record error,
or the whole batch). The adapter then reads those records (``batch/read``, by
id or by email, with our ``crmsync_id``) and adopts the ones that carry no
crmsync_id (or ours) with one ``batch/update`` by HubSpot id setting crmsync_id
and the fields; a whole batch refused is sent again without them. Each request
goes through the send's write watch (a permit each).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any
from urllib.parse import quote

import aiohttp

from crmsync import clock
from crmsync.crm.answer import flag, malformed, message, obj, record_id, seq
from crmsync.crm.base import Op, RecordResult, SendResult, send_singles
from crmsync.crm.credentials import TokenSource
from crmsync.crm.http import Headers, JsonClient, WriteWatch, base_of
from crmsync.crm.mapping import compile_map
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
from crmsync.model import Contact

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
_EXISTING = re.compile(r"Existing ID:\s*(\d+)")
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
        self.map = compile_map(
            DEFAULT_PROPERTIES,
            settings.get("field_map"),
            required=settings.get("required") or (),
            crm=CRM,
        )
        self.email_property = self.map.field_for("email")
        self.match_email = settings.get("match") == "email"
        super().__init__(token=token, settings=settings, session=session, base_url=base_url)
        self.contacts = f"{base_of(base_url)}/crm/v3/objects/contacts"
        key = quote(self.id_property, safe="")
        self.by_key = f"?idProperty={key}"
        self.lookup_key = f"?idProperty={key}&properties={key}"

    def lookups(self, ops: Sequence[Op]) -> list[Op]:
        return []  # HubSpot answers a taken email itself (409): nothing to look up first

    async def prefetch(self, ops: Sequence[Op], watch: WriteWatch | None = None) -> None:
        return None

    def missing(self, contact: Contact, *, creating: bool) -> str | None:
        return self.map.missing(contact, creating=creating)

    def read_usage(self, headers: Headers) -> Usage | None:
        return usage_of(headers)

    def _properties(self, op: Op) -> dict[str, str]:
        assert op.contact is not None, "upserts carry the contact"
        props = {k: _text(v) for k, v in self.map.values(op.contact).items()}
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
        try:
            res = parse_batch_upsert(
                ops,
                *answer,
                id_property=self.id_property,
                email_property=self.email_property,
                most=self.max_block,
            )
        except Permanent as exc:
            if not (self.match_email and _existing(exc.message)):
                raise
            # The whole batch refused for a taken email: adopt what has one, then
            # send the rest again.
            return await self._adopt_then_upsert(ops, watch)
        if not self.match_email:
            return res
        taken = {
            r.contact_id: n
            for op, r in zip(ops, res.results, strict=True)
            if op.kind == "create" and r.error is not None and (n := _existing(r.error.message))
        }
        if not taken:
            return res
        adopted = await self._adopt([op for op in ops if op.contact_id in taken], taken, watch)
        by_contact = {r.contact_id: r for r in res.results}
        by_contact.update((r.contact_id, r) for r in adopted.results if r.ok)
        blocks = [b for b in (res.block_for, adopted.block_for) if b]
        return SendResult([by_contact[op.contact_id] for op in ops], max(blocks, default=None))

    async def _adopt_then_upsert(self, ops: Sequence[Op], watch: WriteWatch | None) -> SendResult:
        creates = [op for op in ops if op.kind == "create" and op.contact is not None]
        adopted = await self._adopt(creates, None, watch)
        # Adopted, or refused for good (the email is another contact's): the rest
        # goes again.
        by_contact = {
            r.contact_id: r
            for r in adopted.results
            if r.ok or (r.error is not None and r.error.code == "CONFLICT")
        }
        rest = [op for op in ops if op.contact_id not in by_contact]
        blocks = [b for b in [adopted.block_for] if b]
        if rest:
            inputs = [
                {
                    "id": op.contact_id,
                    "idProperty": self.id_property,
                    "properties": self._properties(op),
                }
                for op in rest
            ]
            answer = await self._call(
                "POST", f"{self.contacts}/batch/upsert", {"inputs": inputs}, watch
            )
            res = parse_batch_upsert(
                rest,
                *answer,
                id_property=self.id_property,
                email_property=self.email_property,
                most=self.max_block,
            )
            by_contact.update((r.contact_id, r) for r in res.results)
            blocks.extend(b for b in [res.block_for] if b)
        return SendResult([by_contact[op.contact_id] for op in ops], max(blocks, default=None))

    async def _adopt(
        self, ops: Sequence[Op], hs_ids: Mapping[str, str] | None, watch: WriteWatch | None
    ) -> SendResult:
        """Adopt the HubSpot records of ``ops``: found by their ids (``hs_ids``,
        contact id -> HubSpot id, from a 409) or else by email; each one that
        carries no crmsync_id (or ours) is updated with ours and the fields, in
        one ``batch/update``. A contact without such a record fails (CONFLICT)."""
        key = self.id_property
        read: dict[str, Any]
        if hs_ids is not None:
            read = {"inputs": [{"id": hs_ids[op.contact_id]} for op in ops]}
        else:
            emails = sorted({op.contact.email for op in ops if op.contact is not None})
            read = {"inputs": [{"id": e} for e in emails], "idProperty": "email"}
        read["properties"] = [key, "email"]
        answer = await self._call("POST", f"{self.contacts}/batch/read", read, watch)
        blocks = [b for b in [quota_block(*answer, most=self.max_block)] if b]
        found = self._found(answer)
        targets: dict[str, tuple[str, bool]] = {}
        taken: set[str] = set()  # contacts whose email another contact's record has
        claimed: set[str] = set()
        for op in ops:
            hs_id = hs_ids[op.contact_id] if hs_ids is not None else None
            if hs_id is None and op.contact is not None:
                hs_id = found.by_email.get(op.contact.email.lower())
            if hs_id is None or hs_id not in found.owner:
                continue
            owner = found.owner[hs_id]
            if owner in (None, op.contact_id) and hs_id not in claimed:
                targets[op.contact_id] = (hs_id, owner is None)
                claimed.add(hs_id)
            else:  # another contact's record stays theirs
                taken.add(op.contact_id)
        done: set[str | None] = set()
        chosen = [op for op in ops if op.contact_id in targets]
        if chosen:
            inputs = [
                {"id": targets[op.contact_id][0], "properties": self._properties(op)}
                for op in chosen
            ]
            status, headers, body = await self._call(
                "POST", f"{self.contacts}/batch/update", {"inputs": inputs}, watch
            )
            if status not in (200, 207):
                raise error_for(status, headers, body, most=self.max_block)
            blocks.extend(b for b in [quota_block(status, headers, body, most=self.max_block)] if b)
            b = obj(body) or {}
            done = {record_id((obj(raw) or {}).get("id")) for raw in seq(b.get("results")) or []}
        out: list[RecordResult] = []
        for op in ops:
            target = targets.get(op.contact_id)
            if target is not None and target[0] in done:
                out.append(RecordResult(op.contact_id, True, target[0], False, adopted=target[1]))
            else:
                err = _not_adopted(op.contact_id in taken)
                out.append(RecordResult(op.contact_id, False, error=err))
        return SendResult(out, max(blocks, default=None))

    def _found(self, answer: tuple[int, Headers, Any]) -> _Found:
        """What a ``batch/read`` answered: each record's crmsync_id and email."""
        status, headers, body = answer
        if status not in (200, 207):
            raise error_for(status, headers, body, most=self.max_block)
        found = _Found({}, {})
        b = obj(body) or {}
        for raw in seq(b.get("results")) or []:
            item = obj(raw) or {}
            hs_id = record_id(item.get("id"))
            props = obj(item.get("properties")) or {}
            if hs_id is not None:
                found.owner[hs_id] = message(props.get(self.id_property))
                email = message(props.get("email"))
                if email:
                    found.by_email[email.lower()] = hs_id
        return found

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
        existing = _existing(_message(body)[1])
        if self.match_email and existing is not None:
            adopted = await self._adopt([op], {op.contact_id: existing}, watch)
            if adopted.results[0].ok:
                return adopted
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


def _existing(text: str | None) -> str | None:
    """The HubSpot id a 409 names: ``Contact already exists. Existing ID: 12345``."""
    m = _EXISTING.search(text or "")
    return m.group(1) if m else None


def _text(value: Any) -> str:
    """A property value as HubSpot takes it: text; "" clears; true/false."""
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


@dataclass(frozen=True, slots=True)
class _Found:
    owner: dict[str, str | None]  # HubSpot id -> the crmsync_id it carries
    by_email: dict[str, str]  # lower-case email -> HubSpot id


def _not_adopted(taken: bool) -> Permanent:
    if taken:
        return Permanent(
            "Contact already exists with this email and carries another contact's "
            "crmsync_id: it is not adopted",
            status=409,
            code="CONFLICT",
        )
    return Permanent("HubSpot has no free contact with this email", code="NOT_FOUND")
