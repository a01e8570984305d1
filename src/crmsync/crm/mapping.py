"""A connection's field mapping: which CRM field takes which value of a contact.

The ``field_map`` setting is a JSON object of CRM field -> source, merged over
the CRM's defaults (``email -> Email`` and so on). A source is

- a contact column: ``"email"``, ``"first_name"``, ``"last_name"``, ``"company"``, ``"status"``
- a custom attribute: ``"attributes.region"``
- a constant: ``"=crmsync"`` (the text after ``=``)
- any of these followed by transforms: ``"email|lower"``, ``"attributes.code|trim|upper"``
- ``null`` or ``""``: the CRM field is not sent at all.

Renaming is the mapping itself (``{"Region__c": "attributes.region"}``). The
older spelling, contact column -> CRM field (``{"company": "Account_Name__c"}``,
``{"status": null}``), still reads as it did: an entry whose key is a contact
column and whose value is a plain field name (or empty) moves (or drops) that
column's default target.

``required`` lists CRM fields a contact must have a value for (Salesforce's
``LastName`` always): a contact without one is skipped with the reason before
any request is made (``FieldMap.missing``).

``compile_map`` turns the setting into a ``FieldMap`` once per adapter; the
per-contact work is one getter call per mapped field.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from operator import attrgetter
from typing import Any

from crmsync.model import CONTACT_ATTRS, Contact

ATTRIBUTE_PREFIX = "attributes."
CONSTANT_PREFIX = "="
_ATTRIBUTE_KEY = re.compile(r"[a-z][a-z0-9_]{0,62}")
TRANSFORMS: Mapping[str, Callable[[str], str]] = {
    "lower": str.lower,
    "upper": str.upper,
    "trim": str.strip,
}
SOURCE_RULE = (
    "a contact column (" + ", ".join(CONTACT_ATTRS) + "), attributes.<key>, =<constant>, "
    "optionally followed by |lower, |upper or |trim"
)

Getter = Callable[[Contact], Any]


@dataclass(frozen=True, slots=True)
class Source:
    """One parsed source: what it reads and the transforms applied to text."""

    spec: str
    kind: str  # column | attribute | constant
    name: str  # the column, the attribute key or the constant's text
    transforms: tuple[str, ...] = ()

    def getter(self) -> Getter:
        if self.kind == "column":
            read: Getter = attrgetter(self.name)
        elif self.kind == "attribute":
            key = self.name

            def read(c: Contact) -> Any:
                return c.attributes.get(key)
        else:
            value = self.name

            def read(c: Contact) -> Any:
                return value

        if not self.transforms:
            return read
        steps = [TRANSFORMS[t] for t in self.transforms]

        def transformed(c: Contact) -> Any:
            v = read(c)
            if isinstance(v, str):
                for step in steps:
                    v = step(v)
            return v

        return transformed

    def describe(self) -> str:
        """For a skip reason: the contact's field the value comes from."""
        if self.kind == "column":
            return self.name
        if self.kind == "attribute":
            return ATTRIBUTE_PREFIX + self.name
        return f"the constant {self.name!r}"


def parse_source(spec: Any) -> Source:
    """A source from its spelling; ValueError ("must be ...") names what is wrong."""
    if not isinstance(spec, str):
        raise ValueError(f"must be {SOURCE_RULE}")
    if spec.startswith(CONSTANT_PREFIX):
        # A constant is taken whole: a "|" in it is text, not a transform.
        return Source(spec, "constant", spec[len(CONSTANT_PREFIX) :])
    head, *transforms = [p.strip() for p in spec.split("|")]
    for t in transforms:
        if t not in TRANSFORMS:
            raise ValueError(
                f"uses transform {t!r}, which does not exist (transforms: {', '.join(TRANSFORMS)})"
            )
    if head in CONTACT_ATTRS:
        return Source(spec, "column", head, tuple(transforms))
    if head.startswith(ATTRIBUTE_PREFIX):
        key = head[len(ATTRIBUTE_PREFIX) :]
        if not _ATTRIBUTE_KEY.fullmatch(key):
            raise ValueError(
                f"names attribute {key!r}, which is not a valid attribute key "
                "(lower-case letters, digits and _, a letter first)"
            )
        return Source(spec, "attribute", key, tuple(transforms))
    raise ValueError(f"reads {head!r}, which is not {SOURCE_RULE}")


def is_source(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    head = value.split("|")[0].strip()
    return (
        value.startswith(CONSTANT_PREFIX)
        or "|" in value
        or head in CONTACT_ATTRS
        or head.startswith(ATTRIBUTE_PREFIX)
    )


def entries(
    defaults: Mapping[str, str],
    override: Any,
    name_ok: Callable[[str], bool] | None = None,
    name_rule: str = "a CRM field name",
) -> dict[str, Source]:
    """CRM field -> source: the defaults (contact column -> CRM field) with the
    ``field_map`` setting applied. ValueError ("...") names the entry at fault."""
    out: dict[str, Source] = {field: Source(col, "column", col) for col, field in defaults.items()}
    if override is None:
        return out
    if not isinstance(override, Mapping):
        raise ValueError(
            'must be a JSON object of CRM field to source, such as {"Region__c": '
            '"attributes.region", "Email": "email|lower", "LeadSource": "=crmsync"}'
        )
    for key, value in override.items():
        key = str(key)
        if key in CONTACT_ATTRS and (value in (None, "") or not is_source(value)):
            # The older spelling: contact column -> CRM field (or nothing).
            for field in [f for f, s in out.items() if s.spec == key]:
                del out[field]
            if value in (None, ""):
                continue
            if not isinstance(value, str) or (name_ok is not None and not name_ok(value)):
                raise ValueError(f"maps {key} to {value!r}, which is not {name_rule}")
            out[value] = Source(key, "column", key)
            continue
        if name_ok is not None and not name_ok(key):
            raise ValueError(f"has key {key!r}, which is not {name_rule}")
        if value in (None, ""):
            out.pop(key, None)
            continue
        try:
            out[key] = parse_source(value)
        except ValueError as exc:
            raise ValueError(f"maps {key} to {value!r}, which {exc}") from None
    return out


@dataclass(frozen=True, slots=True)
class FieldMap:
    """A connection's compiled mapping: the CRM's values of a contact, and the
    required CRM fields a contact lacks."""

    sources: Mapping[str, Source]  # CRM field -> source, in send order
    getters: tuple[tuple[str, Getter], ...]
    required: tuple[str, ...]
    crm: str = "the CRM"

    def values(self, contact: Contact) -> dict[str, Any]:
        return {field: get(contact) for field, get in self.getters}

    def field_for(self, column: str) -> str | None:
        """The CRM field a contact column is sent to unchanged (e.g. email -> Email)."""
        for field, src in self.sources.items():
            if src.kind == "column" and src.name == column and not src.transforms:
                return field
        return None

    def missing(self, contact: Contact, *, creating: bool = True) -> str | None:
        """Why ``contact`` cannot be sent (a required CRM field without a value), or
        None. An update that does not send a required field leaves it as it is."""
        for field in self.required:
            src = self.sources.get(field)
            if src is None:
                if not creating:
                    continue
                return f"{field} is required by {self.crm} and field_map sends nothing to it"
            value = self.values_of(field, contact)
            if value is None or (isinstance(value, str) and not value.strip()):
                return (
                    f"{field} is required by {self.crm} and the contact has no "
                    f"{src.describe()}; it syncs once it has one"
                )
        return None

    def values_of(self, field: str, contact: Contact) -> Any:
        for f, get in self.getters:
            if f == field:
                return get(contact)
        return None


def compile_map(
    defaults: Mapping[str, str],
    override: Any,
    *,
    required: Iterable[str] = (),
    always_required: Sequence[str] = (),
    crm: str = "the CRM",
) -> FieldMap:
    """The ``FieldMap`` of a connection's settings (checked when written: a setting
    stored before a rule existed that no longer reads falls back to the defaults)."""
    try:
        sources = entries(defaults, override)
    except ValueError:
        sources = entries(defaults, None)
    wanted = list(always_required)
    wanted += [str(f) for f in required if str(f) not in wanted]
    getters = tuple((field, src.getter()) for field, src in sources.items())
    return FieldMap(sources, getters, tuple(wanted), crm)
