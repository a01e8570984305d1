"""A connection's ``--settings``: every key crmsync knows, its type and range.

``KEYS`` is the table: one ``Key`` per setting with the CRMs it applies to and a
check that returns the value as stored (``60.0`` -> ``"v60.0"``) or raises
``ValueError`` with the end of a sentence ("must be ..."). A new setting is one
more row (``register``). Settings are checked when written (``connections add``,
``update``): each problem is one sentence naming the key, an unknown key gets a
"did you mean" when one is close. Connections stored before a rule existed keep
working: loading only lists the problems (``problems``) for a warning.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from crmsync import crm_limits
from crmsync.crm import ADAPTERS
from crmsync.errors import UserError
from crmsync.model import CONTACT_ATTRS

CRMS = ("salesforce", "hubspot")
_API_VERSION = re.compile(r"^v?(\d{2,3})\.0$")
_SF_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,79}$")  # a Salesforce field's API name
_HS_NAME = re.compile(r"^[a-z][a-z0-9_]{0,99}$")  # a HubSpot property's internal name
NAMES = {"salesforce": _SF_NAME, "hubspot": _HS_NAME}
NAME_RULES = {
    "salesforce": "a Salesforce field API name (letters, digits, _; e.g. CrmSync_Id__c)",
    "hubspot": "a HubSpot property name (lower-case letters, digits, _; e.g. crmsync_id)",
}


@dataclass(frozen=True, slots=True)
class Key:
    name: str
    means: str  # what it is, for messages and help
    check: Callable[[Any, str], Any]  # (value, crm) -> value as stored; ValueError: "must ..."
    crms: tuple[str, ...] = CRMS


def _int(low: int, high: int | Callable[[str], int]) -> Callable[[Any, str], int]:
    def check(value: Any, crm: str) -> int:
        top = high(crm) if callable(high) else high
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= top:
            raise ValueError(f"must be a whole number from {low} to {top}")
        return value

    return check


def _seconds(low: float, high: float) -> Callable[[Any, str], float]:
    def check(value: Any, crm: str) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"must be a number of seconds from {low:g} to {high:g}")
        if not low <= value <= high:
            raise ValueError(f"must be a number of seconds from {low:g} to {high:g}")
        return value

    return check


def _api_version(value: Any, crm: str) -> str:
    m = _API_VERSION.match(str(value).strip()) if isinstance(value, str | int | float) else None
    if m is None or isinstance(value, bool):
        raise ValueError("must be a Salesforce API version like v60.0")
    return f"v{m.group(1)}.0"


def _field_name(value: Any, crm: str) -> str:
    if not isinstance(value, str) or not NAMES[crm].match(value):
        raise ValueError(f"must be {NAME_RULES[crm]}")
    return value


def _field_map(value: Any, crm: str) -> dict[str, str | None]:
    if not isinstance(value, Mapping):
        raise ValueError('must be a JSON object such as {"company": "Account_Name__c"}')
    out: dict[str, str | None] = {}
    for attr, target in value.items():
        if attr not in CONTACT_ATTRS:
            near = _close(str(attr), CONTACT_ATTRS)
            raise ValueError(
                f"names contact field {attr!r}, which does not exist{near}"
                f" (contact fields: {', '.join(CONTACT_ATTRS)})"
            )
        if target in (None, ""):
            out[attr] = None  # not sent at all
            continue
        if not isinstance(target, str) or not NAMES[crm].match(target):
            raise ValueError(f"maps {attr} to {target!r}, which is not {NAME_RULES[crm]}")
        out[attr] = target
    return out


def _limit_model(value: Any, crm: str) -> str:
    if value not in crm_limits.MODELS:
        raise ValueError(
            "must be crm (the CRM's own limits: docs/LIMITS.md) or windows (the --rate-limit "
            "windows)"
        )
    return str(value)


def _tier(value: Any, crm: str) -> str:
    return crm_limits.tier(value)


def _time_zone(value: Any, crm: str) -> str:
    return crm_limits.time_zone(value)


KEYS: dict[str, Key] = {}


def register(key: Key) -> None:
    """Add a setting to the table (a later feature's key: match, tier, ...)."""
    KEYS[key.name] = key


for _key in (
    Key("batch_size", "records per CRM request", _int(1, lambda crm: ADAPTERS[crm].max_batch)),
    Key("max_in_flight", "requests in flight per worker process", _int(1, 10_000)),
    Key("timeout_seconds", "seconds to wait for one CRM answer", _seconds(0.1, 300)),
    Key("api_version", "the Salesforce REST API version", _api_version, ("salesforce",)),
    Key("external_id_field", "the Contact external id field", _field_name, ("salesforce",)),
    Key("id_property", "the unique contact property", _field_name, ("hubspot",)),
    Key("field_map", "contact fields to CRM fields", _field_map),
    Key("limit_model", "which limits the connection holds", _limit_model),
    Key(
        "daily_limit",
        "the CRM's daily request budget until one is learnt",
        _int(1, 1_000_000_000),
    ),
    Key("tier", "the HubSpot portal's API tier", _tier, ("hubspot",)),
    Key(
        "time_zone", "the HubSpot portal's time zone, where its day ends", _time_zone, ("hubspot",)
    ),
    Key("concurrency", "requests in flight across every worker", _int(1, 10_000)),
    Key("day_seconds", "how long the CRM's day lasts (a compressed mock's)", _seconds(1, 86_400)),
    Key(
        "token_max_age_seconds",
        "refresh an OAuth access token once it is this old",
        _seconds(1, 86_400),
    ),
):
    register(_key)


def _close(name: str, known: Any) -> str:
    near = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    return f"; did you mean {near[0]!r}?" if near else ""


def check(crm: str, settings: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """(the settings as stored, one sentence per problem)."""
    out: dict[str, Any] = {}
    problems: list[str] = []
    for name, value in settings.items():
        key = KEYS.get(name)
        if key is None:
            problems.append(
                f"--settings {name!r} is not a setting crmsync knows{_close(name, KEYS)} "
                f"(known: {', '.join(sorted(KEYS))})."
            )
            continue
        if crm not in key.crms:
            problems.append(f"--settings {name} applies to {' and '.join(key.crms)} only.")
            continue
        try:
            out[name] = key.check(value, crm)
        except ValueError as exc:
            problems.append(f"--settings {name} ({key.means}) {exc}.")
    return out, problems


def validate(crm: str, settings: Mapping[str, Any]) -> dict[str, Any]:
    """The settings as stored; UserError with one sentence per problem."""
    out, problems = check(crm, settings)
    if problems:
        raise UserError(" ".join(problems))
    return out


def problems(crm: str, settings: Mapping[str, Any]) -> list[str]:
    """What ``validate`` would refuse in settings already stored (for a warning)."""
    return check(crm, settings)[1]
