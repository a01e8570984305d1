"""Prometheus counters of the HTTP API (served at ``GET /metrics``)."""

from __future__ import annotations

from prometheus_client import Counter

CONTACTS_WRITTEN = Counter(
    "crmsync_api_contacts_written_total",
    "Contacts received by PUT or batch, by whether they changed anything.",
    ["result"],
)
CONTACTS_DELETED = Counter(
    "crmsync_api_contacts_deleted_total", "Contacts soft-deleted through the API."
)
BATCHES = Counter("crmsync_api_batches_total", "Accepted POST /v1/contacts:batch requests.")
VALIDATION_ERRORS = Counter(
    "crmsync_api_validation_errors_total", "Requests answered 422 (invalid input)."
)
AUTH_FAILURES = Counter(
    "crmsync_api_auth_failures_total", "Requests answered 401 (missing or unknown API key)."
)
FORBIDDEN = Counter(
    "crmsync_api_forbidden_total",
    "Requests refused for their key's role or tenant (403, or 404/409 for another tenant).",
)
TENANT_CONFLICTS = Counter(
    "crmsync_api_tenant_conflicts_total",
    "Writes refused with 409 because their body named another tenant than they act on.",
)
STATUS_AGGREGATES = Counter(
    "crmsync_api_status_aggregates_total",
    "Status reports computed for GET /metrics (at most one per CRMSYNC_METRICS_CACHE_SECONDS).",
)
