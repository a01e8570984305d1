"""What a valid contact is: one set of rules for the HTTP API and the CSV import.

Writers only validate; version bumps and change capture happen in the
database trigger, so plain SQL writers are captured under the same rules of
what counts as a change.
"""

from __future__ import annotations

import re
from collections.abc import Hashable, Mapping, Sequence
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_core import PydanticCustomError

# Contact ids (and connection ids, tenants) become CRM external ids and URL
# path segments, so they stay within characters every CRM accepts unescaped,
# and hold one character other than a dot: ".", ".." (any id of dots only) are
# what a URL normaliser would drop or resolve, sending the request elsewhere.
# Every pattern is matched whole: Python with ``fullmatch`` (``$`` alone would
# let a trailing newline through), pydantic's engine ends ``$`` at the end.
ID_PATTERN = r"^[A-Za-z0-9_.:-]*[A-Za-z0-9_:-][A-Za-z0-9_.:-]*$"
ID_RE = re.compile(ID_PATTERN)
ID_MAX = 64
ID_RULE = "1-64 characters of A-Z a-z 0-9 _ . : - (not only dots)"
DEFAULT_TENANT = "default"
STATUSES: tuple[str, ...] = ("active", "inactive", "lead", "customer", "churned")
Status = Literal["active", "inactive", "lead", "customer", "churned"]
MAX_BATCH = 1000
EMAIL_MAX = 254
NAME_MAX = 100
COMPANY_MAX = 255

# Pragmatic RFC 5322 subset: the dot-atom local part and a dotted DNS name,
# which is what Salesforce and HubSpot accept for their email fields.
_EMAIL_RE = re.compile(
    r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
    r"@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+"
    r"[A-Za-z](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?$"
)

ContactId = Annotated[str, Field(pattern=ID_PATTERN, min_length=1, max_length=ID_MAX)]
FIELDS: tuple[str, ...] = ("tenant", "email", "first_name", "last_name", "company", "status")
# Custom attributes: a flat object of scalars with keys a field_map can name
# ("attributes.<key>"), bounded so one contact stays a small row and one request.
ATTRIBUTE_KEY = re.compile(r"[a-z][a-z0-9_]{0,62}")
ATTRIBUTES_MAX = 50
ATTRIBUTE_VALUE_MAX = 1000
ATTRIBUTES_RULE = (
    f"at most {ATTRIBUTES_MAX} keys of lower-case letters, digits and _ (a letter first, "
    f"up to 63 characters), each a string of at most {ATTRIBUTE_VALUE_MAX} characters, "
    "a number, true/false or null"
)
Scalar = str | int | float | bool | None
# PostgreSQL text holds neither, nor does a CRM: NUL and unpaired surrogates.
_UNSTORABLE = re.compile(r"[\x00\ud800-\udfff]")


def is_id(value: str) -> bool:
    """A valid contact, connection or tenant id (see ``ID_PATTERN``)."""
    return len(value) <= ID_MAX and ID_RE.fullmatch(value) is not None


def email_problem(value: str) -> str | None:
    """Why ``value`` is not an acceptable email address, or None if it is."""
    if len(value) > EMAIL_MAX:
        return f"must be at most {EMAIL_MAX} characters"
    local, _, _ = value.partition("@")
    if len(local) > 64 or not _EMAIL_RE.fullmatch(value):
        return "not a valid email address"
    return None


def attributes_problem(value: Any) -> tuple[str, str] | None:
    """(the key at fault, why) when ``value`` is not a valid attributes object, or None."""
    if not isinstance(value, Mapping):
        return "", f"must be a JSON object: {ATTRIBUTES_RULE}"
    if len(value) > ATTRIBUTES_MAX:
        return "", f"has {len(value)} keys; at most {ATTRIBUTES_MAX}"
    for key, v in value.items():
        if not isinstance(key, str) or ATTRIBUTE_KEY.fullmatch(key) is None:
            return str(key)[:80], f"is not a valid key: {ATTRIBUTES_RULE}"
        if isinstance(v, str):
            if len(v) > ATTRIBUTE_VALUE_MAX:
                return key, f"must be at most {ATTRIBUTE_VALUE_MAX} characters"
            problem = text_problem(v)
            if problem:
                return key, problem
        elif isinstance(v, float) and (v != v or v in (float("inf"), float("-inf"))):
            return key, "must be a finite number"
        elif not isinstance(v, int | float | bool) and v is not None:
            return key, "must be a string, a number, true/false or null (not a list or object)"
    return None


def text_problem(value: str) -> str | None:
    """Why ``value`` cannot be stored as text, or None."""
    found = _UNSTORABLE.search(value)
    if found is None:
        return None
    what = "a NUL character" if found.group() == "\x00" else "an unpaired surrogate"
    return f"must not contain {what} (at position {found.start()})"


class ContactIn(BaseModel):
    """The writable fields of a contact (the body of ``PUT /v1/contacts/{id}``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    email: str = Field(max_length=EMAIL_MAX)
    first_name: str | None = Field(default=None, max_length=NAME_MAX)
    last_name: str | None = Field(default=None, max_length=NAME_MAX)
    company: str | None = Field(default=None, max_length=COMPANY_MAX)
    status: Status = "active"
    attributes: dict[str, Scalar] = Field(default_factory=dict)
    # None: the tenant the write acts on (the API key's, the path's, --tenant);
    # naming another one is refused, never a move.
    tenant: str | None = Field(default=None, pattern=ID_PATTERN, max_length=ID_MAX)

    @field_validator("*", mode="before")
    @classmethod
    def _storable(cls, v: Any) -> Any:
        problem = text_problem(v) if isinstance(v, str) else None
        if problem:
            raise PydanticCustomError("text", problem)
        return v

    @field_validator("attributes", mode="before")
    @classmethod
    def _attributes(cls, v: Any) -> Any:
        problem = attributes_problem(v)
        if problem:
            key, why = problem
            raise PydanticCustomError(
                "attributes", "attributes{key} {why}", {"key": f".{key}" if key else "", "why": why}
            )
        return v

    @field_validator("email")
    @classmethod
    def _email(cls, v: str) -> str:
        problem = email_problem(v)
        if problem:
            raise PydanticCustomError("email", problem)
        return v


class ContactPut(ContactIn):
    """PUT body: ``id`` may be repeated in the body but must then match the path."""

    id: ContactId | None = None


class ContactWithId(ContactIn):
    """One item of a batch or one CSV row."""

    id: ContactId

    @property
    def tenant_or_default(self) -> str:
        return self.tenant or DEFAULT_TENANT

    def row(
        self,
    ) -> tuple[str, str, str, str | None, str | None, str | None, str, dict[str, Scalar]]:
        return (
            self.id,
            self.tenant_or_default,
            self.email,
            self.first_name,
            self.last_name,
            self.company,
            self.status,
            self.attributes,
        )


class BatchIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    contacts: list[ContactWithId] = Field(min_length=1, max_length=MAX_BATCH)


Columns = tuple[
    list[str],
    list[str],
    list[str],
    list[str | None],
    list[str | None],
    list[str | None],
    list[str],
    list[dict[str, Scalar]],
]


def columns(items: Sequence[ContactWithId], tenants: Sequence[str] | None = None) -> Columns:
    """Column arrays for the set-based ``unnest`` upsert, in query parameter order;
    ``tenants``: the tenant of each item (else the item's own, or ``default``)."""
    return (
        [c.id for c in items],
        list(tenants) if tenants is not None else [c.tenant_or_default for c in items],
        [c.email for c in items],
        [c.first_name for c in items],
        [c.last_name for c in items],
        [c.company for c in items],
        [c.status for c in items],
        [c.attributes for c in items],
    )


K = TypeVar("K", bound=Hashable)


def duplicate_ids(ids: Sequence[K]) -> list[tuple[int, K, int]]:
    """(index, id, first index) of every id already seen earlier in ``ids``."""
    first: dict[K, int] = {}
    dups: list[tuple[int, K, int]] = []
    for i, cid in enumerate(ids):
        if cid in first:
            dups.append((i, cid, first[cid]))
        else:
            first[cid] = i
    return dups


def check_row(raw: Mapping[str, Any]) -> ContactWithId | list[tuple[str, str]]:
    """Validate one loose record (e.g. a CSV row): the contact, or its (field, reason) list."""
    try:
        return ContactWithId.model_validate(raw)
    except ValidationError as exc:
        return [(_field(e["loc"]), _reason(e)) for e in exc.errors(include_url=False)]


def _field(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(p) for p in loc) or "row"


def _reason(e: Mapping[str, Any]) -> str:
    return str(e.get("msg", "invalid"))
