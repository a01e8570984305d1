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
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from crmsync.crm.http import WriteWatch
from crmsync.errors import AuthFailed, CrmError, RateLimited
from crmsync.model import CONTACT_ATTRS, Contact


@dataclass(frozen=True, slots=True)
class Op:
    kind: Literal["create", "update", "delete"]
    contact_id: str
    contact: Contact | None  # the contact as the worker read it; None for delete
    external_id: str | None  # CRM record id from the ledger (update/delete)
    # A create whose record the CRM may hold already (an earlier attempt may have
    # reached it without us learning its id): where a create is not an upsert,
    # the adapter looks the record up by our id first.
    maybe_exists: bool = False


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

    async def ready(self) -> bool:
        """Wait until the connection's credentials can be sent (a token being
        refreshed); True when that meant waiting (the worker then re-takes the
        request's permits, as after any wait)."""
        ...

    async def send(self, ops: Sequence[Op], watch: WriteWatch | None = None) -> SendResult:
        """One HTTP request when it can: ops are all upserts or all deletes, one op
        goes to the single-record endpoints, more to the batch ones; whole-request
        failures raise. Every HTTP call of the send reports to ``watch``
        (``crmsync.crm.http``): the first one's write, a permit before each
        further one."""
        ...


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
