"""Secrets never leave: masking for logs, answers and errors.

Three nets, applied to every log line (``logs.py``) and usable on any text:
- values under a sensitive key (``token``, ``authorization``, ``client_secret`` …) are masked
  whatever they hold;
- patterns that carry a secret in plain text: ``Bearer <token>``, credentials in a URL
  (``https://user:pass@host``), ``access_token=…`` style query and form fields;
- every secret the process has been told about (``remember``: the CRM tokens a worker loaded),
  wherever it appears, e.g. inside an exception's message.
A masked secret keeps its last 4 characters so two can still be told apart.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable, Mapping, MutableMapping
from typing import Any

SENSITIVE_KEYS = frozenset(
    {
        "access_token",
        "api_key",
        "api_keys",
        "authorization",
        "client_secret",
        "password",
        "private_key",
        "refresh_token",
        "secret",
        "secret_key",
        "token",
        "x-api-key",
    }
)
MIN_REMEMBERED = 8  # shorter values would mask ordinary words

_BEARER = re.compile(r"(?i)\b(bearer|basic)\s+([^\s'\",;]{4,})")
_URL_CREDENTIALS = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)([^/\s:@]*):([^/\s@]*)@")
_URL_USER = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)([^/\s:@]{16,})@")
_FIELDS = re.compile(
    r"(?i)\b(access_token|refresh_token|client_secret|password|api_key|token|assertion|code)"
    r"(\"?\s*[=:]\s*\"?)([^&\s\"',}]{4,})"
)

_lock = threading.Lock()
_remembered: set[str] = set()
_pattern: re.Pattern[str] | None = None


def mask(secret: str | None) -> str:
    """``…`` and the last 4 characters (nothing of a secret shorter than 8)."""
    if not secret:
        return "…"
    return f"…{secret[-4:]}" if len(secret) >= MIN_REMEMBERED else "…"


def remember(secrets: Iterable[str | None]) -> None:
    """Mask these values wherever they appear from now on (e.g. in an error message)."""
    global _pattern
    fresh = {s for s in secrets if s and len(s) >= MIN_REMEMBERED} - _remembered
    if not fresh:
        return
    with _lock:
        _remembered.update(fresh)
        ordered = sorted(_remembered, key=len, reverse=True)
        _pattern = re.compile("|".join(re.escape(s) for s in ordered))


def forget_all() -> None:
    """Tests only: start from an empty set of remembered secrets."""
    global _pattern
    with _lock:
        _remembered.clear()
        _pattern = None


def text(value: str) -> str:
    """``value`` with every secret it carries masked."""
    pattern = _pattern
    if pattern is not None:
        value = pattern.sub(lambda m: mask(m.group(0)), value)
    value = _BEARER.sub(lambda m: f"{m.group(1)} {mask(m.group(2))}", value)
    value = _URL_CREDENTIALS.sub(lambda m: f"{m.group(1)}{m.group(2)}:***@", value)
    value = _URL_USER.sub(lambda m: f"{m.group(1)}{mask(m.group(2))}@", value)
    return _FIELDS.sub(lambda m: f"{m.group(1)}{m.group(2)}{mask(m.group(3))}", value)


def value(obj: Any, key: str | None = None) -> Any:
    """``obj`` (str, mapping, sequence, other) with secrets masked, recursively."""
    if key is not None and key.lower() in SENSITIVE_KEYS and obj is not None:
        return mask(obj if isinstance(obj, str) else str(obj))
    if isinstance(obj, str):
        return text(obj)
    if isinstance(obj, Mapping):
        return {k: value(v, k if isinstance(k, str) else None) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(value(v) for v in obj)
    if isinstance(obj, bytes | int | float | bool) or obj is None:
        return obj
    return text(str(obj))


def event(_logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> dict[str, Any]:
    """structlog processor: the whole event with its secrets masked."""
    out: dict[str, Any] = value(event_dict)
    return out
