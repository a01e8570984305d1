"""The shapes of the API's answers, as the OpenAPI document declares them.

Handlers answer with orjson directly (no per-request model validation on the
write path); the integration tests check every answer against these models.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel

from crmsync.contacts import Status


class Error(BaseModel):
    detail: str


class Contact(BaseModel):
    id: str
    tenant: str
    email: str
    first_name: str | None
    last_name: str | None
    company: str | None
    status: Status
    attributes: dict[str, str | int | float | bool | None]
    version: int
    updated_at: datetime
    deleted_at: datetime | None


class ContactWritten(Contact):
    changed: bool  # false: the contact already held exactly this (no new version)


class SyncState(BaseModel):
    connection_id: str
    status: str  # synced | skipped | deleted | retrying | dead
    external_id: str | None
    synced_version: int | None
    attempts: int
    last_error: str | None
    rule: str | None
    updated_at: datetime


class ContactWithSync(Contact):
    sync: list[SyncState]


class BatchItem(BaseModel):
    id: str
    tenant: str
    version: int | None
    changed: bool


class BatchWritten(BaseModel):
    count: int
    changed: int
    contacts: list[BatchItem]


class RateLimit(BaseModel):
    limit: int
    window_ms: int


class ConnectionView(BaseModel):
    id: str
    tenant: str
    crm: str
    account: str
    base_url: str
    auth: str = "bearer"  # bearer | oauth-refresh | jwt
    token: str  # its last 4 characters at most (oauth-refresh: of the refresh token)
    rate_limits: list[RateLimit]
    settings: dict[str, Any]
    paused: bool
    paused_reason: str | None
    created_at: str | None


class Connections(BaseModel):
    connections: list[ConnectionView]


class QueueCounts(BaseModel):
    ready: int | None
    leased: int | None
    delayed: int | None
    requeue: int | None


class Latency(BaseModel):
    p50: float | None
    p99: float | None
    send_lag_p99: float | None


class ConnectionStatus(BaseModel):
    id: str
    tenant: str
    crm: str
    paused: bool
    paused_reason: str | None
    sync: dict[str, int]
    dead_letters: int
    # From Redis, absent when it is unreachable:
    queue: QueueCounts | None = None
    breaker: str | None = None
    blocked_for_s: float | None = None
    blocked_until: str | None = None  # ISO time a CRM's answer holds it back until
    blocked_reason: str | None = None  # the CRM's words (a 429's message, quota spent)
    limits: list[RateLimit] | None = None
    counters: dict[str, int] | None = None
    latency_ms: Latency | None = None
    sync_lag_ms: dict[str, Any] | None = None  # histogram (crmsync.figures)
    oldest_age_s: float | None = None


class Totals(BaseModel):
    contacts: int
    deleted_contacts: int
    outbox: int
    dead_letters: int


class StatusReport(BaseModel):
    connections: list[ConnectionStatus]
    totals: Totals
    tenants: dict[str, Totals]
    processes: dict[str, Any] | None = None  # relay and reconcile counters (admin only)
    redis_error: str | None = None


class DeadLetter(BaseModel):
    id: int
    connection_id: str
    contact_id: str
    version: int | None
    operation: str
    error_code: str | None
    error: str
    http_status: int | None
    payload: Any
    attempts: int
    created_at: datetime
    resolved_at: datetime | None = None  # when a later version of the contact synced


class DeadLetters(BaseModel):
    total: int  # matching letters in all; `dead_letters` holds the first `limit`
    dead_letters: list[DeadLetter]


class Replayed(BaseModel):
    replayed: int


class Purged(BaseModel):
    purged: int


class Paused(BaseModel):
    id: str
    paused: bool
    paused_reason: str | None


class Series(BaseModel):
    fields: list[str]
    series: dict[str, Any]  # connection id -> its points (see crmsync.timeseries)


class Found(BaseModel):
    contact: dict[str, Any]
    sync: list[dict[str, Any]]
    dead_letters: list[dict[str, Any]]


class Lookup(BaseModel):
    query: str
    contacts: list[Found]


class ApiKey(BaseModel):
    id: str
    prefix: str
    tenant: str | None
    role: str
    name: str | None
    created_at: str | None
    revoked_at: str | None
    last_used_at: str | None


class ApiKeys(BaseModel):
    keys: list[ApiKey]


class ApiKeyIn(BaseModel):
    role: str  # admin | writer | reader
    tenant: str | None = None  # required for writer and reader, absent for admin
    name: str | None = None


class ApiKeyCreated(ApiKey):
    key: str  # shown once: only its hash is kept
