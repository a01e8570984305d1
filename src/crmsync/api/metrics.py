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
