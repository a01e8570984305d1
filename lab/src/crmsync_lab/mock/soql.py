"""The SOQL the mock answers: enough to find Contacts by email or external id.

``SELECT f, ... FROM Contact [WHERE c [AND c]...] [ORDER BY f [ASC|DESC]] [LIMIT n]``
where a condition is ``field = 'x'``, ``field != 'x'``, ``field = null`` or
``field IN ('x', 'y')``. Keywords and field names are case-insensitive, and so
is ``=`` on text, as in Salesforce. Anything else is ``MALFORMED_QUERY``; an
unknown field ``INVALID_FIELD``; another object ``INVALID_TYPE``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

_TOKEN = re.compile(
    r"\s*(?:(?P<str>'(?:[^'\\]|\\.)*')|(?P<num>\d+)|(?P<op>!=|=|\(|\)|,)|(?P<word>[A-Za-z_][\w.]*))"
)


class SoqlError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Condition:
    field: str
    op: str  # "=", "!=", "in"
    values: tuple[str | None, ...]

    def matches(self, record: Mapping[str, Any]) -> bool:
        value = record.get(self.field)
        got = None if value in (None, "") else str(value).lower()
        hit = any(got == (v.lower() if v is not None else None) for v in self.values)
        return not hit if self.op == "!=" else hit


@dataclass(frozen=True)
class Query:
    fields: tuple[str, ...]
    where: tuple[Condition, ...]
    order: tuple[str, bool] | None  # (field, descending)
    limit: int | None

    def run(self, records: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
        hits = [r for r in records if all(c.matches(r) for c in self.where)]
        if self.order is not None:
            name, desc = self.order
            hits.sort(key=lambda r: (r.get(name) is None, str(r.get(name) or "")), reverse=desc)
        return hits if self.limit is None else hits[: self.limit]


def _tokens(text: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    pos = 0
    text = text.strip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None or m.end() == pos:
            raise SoqlError("MALFORMED_QUERY", f"unexpected token: '{text[pos:].split()[0]}'")
        kind = m.lastgroup or ""
        out.append((kind, m.group(kind)))
        pos = m.end()
    return out


def _string(token: str) -> str:
    return re.sub(r"\\(.)", r"\1", token[1:-1])


def parse(text: str, fields: Iterable[str], sobject: str = "Contact") -> Query:
    """Parse ``text`` against the object's ``fields``; SoqlError as Salesforce words it."""
    names = {f.lower(): f for f in fields}
    toks = _tokens(text)
    pos = 0

    def peek(word: str) -> bool:
        return pos < len(toks) and toks[pos][1].lower() == word

    def take(kind: str | None = None, word: str | None = None) -> str:
        nonlocal pos
        if pos >= len(toks):
            raise SoqlError("MALFORMED_QUERY", "unexpected end of query")
        got_kind, got = toks[pos]
        if (kind and got_kind != kind) or (word and got.lower() != word):
            raise SoqlError("MALFORMED_QUERY", f"unexpected token: '{got}'")
        pos += 1
        return got

    def field() -> str:
        name = take("word")
        real = names.get(name.lower())
        if real is None:
            raise SoqlError("INVALID_FIELD", f"No such column '{name}' on entity '{sobject}'.")
        return real

    def value() -> str | None:
        if peek("null"):
            take("word")
            return None
        return _string(take("str"))

    take("word", "select")
    selected = [field()]
    while pos < len(toks) and toks[pos][1] == ",":
        take("op")
        selected.append(field())
    take("word", "from")
    obj = take("word")
    if obj.lower() != sobject.lower():
        raise SoqlError("INVALID_TYPE", f"sObject type '{obj}' is not supported.")
    where: list[Condition] = []
    if peek("where"):
        take("word")
        while True:
            name = field()
            if peek("in"):
                take("word")
                take("op")
                values = [value()]
                while pos < len(toks) and toks[pos][1] == ",":
                    take("op")
                    values.append(value())
                if take("op") != ")":
                    raise SoqlError("MALFORMED_QUERY", "expecting a right parentheses")
                where.append(Condition(name, "in", tuple(values)))
            else:
                op = take("op")
                if op not in ("=", "!="):
                    raise SoqlError("MALFORMED_QUERY", f"unexpected token: '{op}'")
                where.append(Condition(name, op, (value(),)))
            if not peek("and"):
                break
            take("word")
    order = None
    if peek("order"):
        take("word")
        take("word", "by")
        name = field()
        desc = False
        if peek("asc") or peek("desc"):
            desc = take("word").lower() == "desc"
        order = (name, desc)
    limit = None
    if peek("limit"):
        take("word")
        limit = int(take("num"))
    if pos != len(toks):
        raise SoqlError("MALFORMED_QUERY", f"unexpected token: '{toks[pos][1]}'")
    return Query(tuple(selected), tuple(where), order, limit)
