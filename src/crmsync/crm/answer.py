"""Reading a CRM's answer without trusting its shape.

A body is whatever came over the wire: JSON of any shape, a proxy's HTML page,
nothing at all. The adapters read it only through these readers, each of which
gives the value of the type asked for or None, never an exception; so a wrong
type anywhere (an id as a number, ``results: [1, 2, 3]``, ``errors: ["boom"]``)
becomes an error value (``Malformed``) carrying a short excerpt of the body,
bounded and with its secrets masked.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import orjson

from crmsync import redact
from crmsync.errors import Malformed

EXCERPT_CHARS = 200  # of a body quoted in an error
MESSAGE_CHARS = 500  # of a CRM's own error message
ID_CHARS = 255  # a CRM record id longer than this is not one
# NUL and lone surrogates: PostgreSQL text cannot hold them, nor can a log line.
_UNSTORABLE = re.compile(r"[\x00\ud800-\udfff]")
_BAD_ID = re.compile(r"[\x00-\x20\x7f\ud800-\udfff]")


@dataclass(frozen=True, slots=True)
class NotJson:
    """A body that is not JSON: its start, decoded leniently."""

    text: str


def loads(raw: bytes) -> Any:
    """The JSON of a body; None when it is empty, ``NotJson`` when it is not JSON."""
    if not raw.strip():
        return None
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return NotJson(raw[: EXCERPT_CHARS * 4].decode("utf-8", "replace"))


def obj(value: Any) -> dict[str, Any] | None:
    return value if isinstance(value, dict) else None


def seq(value: Any) -> list[Any] | None:
    return value if isinstance(value, list) else None


def flag(value: Any) -> bool | None:
    """A JSON boolean (not 0, 1 or "true")."""
    return value if isinstance(value, bool) else None


def record_id(value: Any) -> str | None:
    """A CRM record id: a non-empty string of printable characters (not a number,
    not an object: such an answer does not name the record)."""
    if isinstance(value, str) and 0 < len(value) <= ID_CHARS and not _BAD_ID.search(value):
        return value
    return None


def clean(text: str, limit: int = MESSAGE_CHARS) -> str:
    """``text`` fit to store and show: bounded, secrets masked, no NUL or lone surrogate."""
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return _UNSTORABLE.sub("\ufffd", redact.text(text))


def message(value: Any) -> str | None:
    """A CRM's error message (a non-empty string), fit to store."""
    return clean(value) if isinstance(value, str) and value.strip() else None


def excerpt(body: Any) -> str:
    """The start of a body as text, for an error message."""
    if body is None:
        return "(empty body)"
    if isinstance(body, NotJson):
        text = body.text
    else:
        try:
            text = orjson.dumps(body).decode()
        except TypeError:  # not JSON-serializable: only a test would hand one
            text = repr(body)
    return clean(text, EXCERPT_CHARS)


def malformed(
    crm: str, status: int, why: str, body: Any, code: str = "MALFORMED_ANSWER"
) -> Malformed:
    """The error of an answer that does not say what happened, quoting the body."""
    return Malformed(f"{crm} answered {status} {why}: {excerpt(body)}", status=status, code=code)
