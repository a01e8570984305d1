"""The one small protocol every CRM adapter speaks, and what both adapters share.

An adapter turns a list of ops (all upserts or all deletes) into exactly one
HTTP request when it can, and maps every answer onto a per-record result or
one of the errors of ``crmsync.errors``. The response mapping is kept in pure
functions over ``(status, headers, body)`` so tests can feed it the CRMs'
documented example answers without a server.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import aiohttp
import orjson
from yarl import URL

from crmsync.errors import AuthFailed, CrmError, RateLimited, Retryable

Headers = Mapping[str, str]


@dataclass(frozen=True, slots=True)
class ContactFields:
    contact_id: str
    email: str
    first_name: str | None
    last_name: str | None
    company: str | None
    status: str


@dataclass(frozen=True, slots=True)
class Op:
    kind: Literal["create", "update", "delete"]
    contact_id: str
    fields: ContactFields | None  # None for delete
    external_id: str | None  # CRM record id from the ledger (update/delete)


@dataclass(frozen=True, slots=True)
class RecordResult:
    contact_id: str
    ok: bool
    external_id: str | None = None  # CRM's record id on success
    created: bool | None = None
    error: CrmError | None = None  # Permanent / Retryable for this record only


@dataclass(frozen=True, slots=True)
class SendResult:
    results: list[RecordResult]  # one per op, same order
    block_for: float | None = None  # seconds the connection should pause (quota headers)


class CrmAdapter(Protocol):
    crm: str  # "salesforce" | "hubspot"
    max_batch: int  # 200 / 100

    async def send(self, ops: Sequence[Op]) -> SendResult:
        """One HTTP request (see docs/INTERNALS.md); whole-request failures raise."""
        ...


# Our contact attributes, in the order adapters map them onto CRM fields.
CONTACT_ATTRS = ("email", "first_name", "last_name", "company", "status")


def field_map(defaults: Mapping[str, str], override: Any) -> dict[str, str]:
    """The connection's ``field_map`` setting merged over the CRM's defaults.

    Mapping an attribute to ``""`` or ``None`` stops sending it.
    """
    merged: dict[str, str | None] = dict(defaults)
    if isinstance(override, Mapping):
        for k, v in override.items():
            if k in CONTACT_ATTRS:
                merged[k] = str(v) if v else None
    return {k: v for k, v in merged.items() if v}


def base_of(url: str) -> str:
    """A connection's base URL, percent-encoded once (every path and query part the
    adapters add is quoted by them), so requests skip yarl's encoding pass."""
    return str(URL(url)).rstrip("/")


def loads(body: bytes) -> Any:
    """The JSON of a CRM body, or None when it is empty or not JSON (proxy pages)."""
    if not body:
        return None
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return None


def timeout_from(settings: Mapping[str, Any], default: float = 10.0) -> aiohttp.ClientTimeout:
    try:
        seconds = float(settings.get("timeout_seconds", default))
    except (TypeError, ValueError):
        seconds = default
    return aiohttp.ClientTimeout(total=seconds if seconds > 0 else default)


async def call(
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    *,
    headers: Mapping[str, str],
    body: bytes | None,
    limit: aiohttp.ClientTimeout,
) -> tuple[int, Headers, bytes]:
    """One HTTP exchange; no answer at all (timeout, reset, refused) is Retryable.

    A ``WRITE_WATCH`` set by the calling task is told when its first request is
    written: by the body as it goes out, or now for a request without one (its
    headers go out within this call, waiting on nothing but a pooled connection).
    A further request of the same task first awaits the watch's extra permit."""
    data: bytes | WatchedBody | None = body
    watch = WRITE_WATCH.get()
    if watch is not None:
        if not watch.started:
            watch.started = True
            if body is None:
                watch.fire()
            else:
                data = WatchedBody(body, watch, headers.get("Content-Type", "application/json"))
        elif watch.extra_permit is not None:
            await watch.extra_permit()
    try:
        target = URL(url, encoded=True)  # built from base_of() and quoted parts
        async with session.request(
            method, target, data=data, headers=headers, timeout=limit
        ) as resp:
            return resp.status, resp.headers, await resp.read()
    except TimeoutError as exc:
        message = f"no answer within {limit.total}s: {method} {url}"
        raise Retryable(message, code="TIMEOUT") from exc
    except aiohttp.ClientError as exc:
        detail = str(exc) or type(exc).__name__
        raise Retryable(f"connection failed: {detail}", code="CONNECTION") from exc


@dataclass(slots=True)
class WriteWatch:
    """What a sender wants to hear from ``call`` about its requests to the CRM.

    ``on_write`` is told once, when the first request is written (the moment the
    CRM starts counting it). ``extra_permit`` is awaited before every further
    request of the same send (a follow-up such as HubSpot's update after a 409),
    so each request the CRM counts had a permit of the limiter."""

    on_write: Callable[[], None]
    extra_permit: Callable[[], Awaitable[None]] | None = None
    started: bool = False
    fired: bool = False

    def fire(self) -> None:
        if not self.fired:
            self.fired = True
            self.on_write()


# Set by a sender in its own task; read by ``call``.
WRITE_WATCH: ContextVar[WriteWatch | None] = ContextVar("crmsync_write_watch", default=None)


class WatchedBody(aiohttp.BytesPayload):
    """A request body that fires its watch as its bytes are handed to the socket:
    after the headers are built and the connection is taken, so a stall anywhere
    before the write (a busy loop, a descheduled process) is seen."""

    def __init__(self, value: bytes, watch: WriteWatch, content_type: str) -> None:
        super().__init__(value, content_type=content_type)
        self._watch = watch

    async def write(self, writer: Any) -> None:
        self._watch.fire()
        await super().write(writer)

    async def write_with_length(self, writer: Any, content_length: int | None) -> None:
        # aiohttp >= 3.12 writes through this; older versions through ``write``.
        self._watch.fire()
        await super().write_with_length(writer, content_length)


class JsonClient:
    """One JSON exchange with a CRM on the process's shared session."""

    def __init__(
        self, *, token: str, settings: Mapping[str, Any], session: aiohttp.ClientSession
    ) -> None:
        self.session = session
        self.timeout = timeout_from(settings)
        self.headers = {
            "Authorization": f"Bearer {token}",
            "Content-Type": "application/json",
            "Accept": "application/json",
        }

    async def _call(self, method: str, url: str, payload: Any = None) -> tuple[int, Headers, Any]:
        body = None if payload is None else dumps(payload)
        status, headers, raw = await call(
            self.session, method, url, headers=self.headers, body=body, limit=self.timeout
        )
        return status, headers, loads(raw)


def dumps(obj: Any) -> bytes:
    return orjson.dumps(obj)


async def send_singles(
    ops: Sequence[Op],
    send_one: Callable[[Op], Awaitable[SendResult]],
    by_contact: dict[str, RecordResult],
    blocks: list[float],
) -> None:
    """Send ``ops`` one request each, concurrently, merging into ``by_contact``.

    A CRM error of one record stays with that record; a rate limit or an auth
    failure concerns the whole connection and is raised.
    """
    outs = await asyncio.gather(*(send_one(op) for op in ops), return_exceptions=True)
    for op, out in zip(ops, outs, strict=True):
        if isinstance(out, RateLimited | AuthFailed):
            raise out
        if isinstance(out, CrmError):
            by_contact[op.contact_id] = RecordResult(op.contact_id, False, error=out)
        elif isinstance(out, BaseException):
            raise out
        else:
            by_contact[op.contact_id] = out.results[0]
            blocks.extend(b for b in [out.block_for] if b)
