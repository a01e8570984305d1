"""``crmsync contacts import FILE.csv``: bulk load through COPY and one upsert.

The file is read once: each row is checked with the API's contact rules
(crmsync.contacts) while it streams into a COPY to a temporary staging table,
then one ``INSERT ... SELECT ... ON CONFLICT`` merges the staging table into
``contacts`` so the trigger captures every real change in the same
transaction. Bad rows are reported with their line number and skipped; the
good ones are kept. When an id appears on several lines the last line wins
(as if the rows had been written one after another).

Custom attributes come in columns named ``attr.<key>`` (``attr.region``): a
non-empty cell sets the key to the cell's text, an empty one leaves it out. As
with a PUT, an imported contact's attributes are those of its row.

An import writes one tenant's contacts (``--tenant``, default ``default``): a
row whose ``tenant`` column names another tenant is a bad row (a contact never
moves between tenants, and an import is not the place to write two tenants).
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import orjson

from crmsync import db
from crmsync.contacts import (
    ATTRIBUTE_KEY,
    ATTRIBUTES_RULE,
    ID_RULE,
    ContactWithId,
    check_row,
    is_id,
)
from crmsync.errors import UserError

COLUMNS: tuple[str, ...] = ("id", "email", "first_name", "last_name", "company", "status", "tenant")
REQUIRED: tuple[str, ...] = ("id", "email")
ATTR_PREFIX = "attr."
_STAGING_COLUMNS = (
    "line_no",
    "id",
    "tenant",
    "email",
    "first_name",
    "last_name",
    "company",
    "status",
    "attributes",
)


@dataclass(frozen=True, slots=True)
class Rejected:
    line: int
    field: str
    reason: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.field}: {self.reason}"


@dataclass(slots=True)
class ImportResult:
    rows: int = 0  # data rows read (blank lines not counted)
    accepted: int = 0  # rows that passed validation
    inserted: int = 0  # new contacts
    updated: int = 0  # existing contacts that changed
    unchanged: int = 0  # existing contacts already equal (no new version)
    superseded: int = 0  # accepted rows overridden by a later line with the same id
    rejected: list[Rejected] = field(default_factory=list)

    @property
    def rejected_rows(self) -> int:
        return len({r.line for r in self.rejected})

    def as_dict(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "accepted": self.accepted,
            "inserted": self.inserted,
            "updated": self.updated,
            "unchanged": self.unchanged,
            "superseded": self.superseded,
            "rejected_rows": self.rejected_rows,
            "rejected": [
                {"line": r.line, "field": r.field, "reason": r.reason} for r in self.rejected
            ],
        }


def _header(raw: list[str], path: Path) -> list[str]:
    names = [h.strip().lower() for h in raw]
    unknown = [h for h in names if h not in COLUMNS and not h.startswith(ATTR_PREFIX)]
    if unknown:
        raise UserError(
            f"{path}: unknown column {unknown[0]!r} in the header; columns are "
            f"{', '.join(COLUMNS)} and attr.<key> for custom attributes"
        )
    bad = [h for h in names if h.startswith(ATTR_PREFIX) and not ATTRIBUTE_KEY.fullmatch(h[5:])]
    if bad:
        raise UserError(
            f"{path}: column {bad[0]!r} does not name a valid attribute: {ATTRIBUTES_RULE}"
        )
    missing = [c for c in REQUIRED if c not in names]
    if missing:
        raise UserError(f"{path}: the header has no {missing[0]!r} column (needs id and email)")
    dup = next((h for h in names if names.count(h) > 1), None)
    if dup:
        raise UserError(f"{path}: column {dup!r} appears twice in the header")
    return names


def _record(names: list[str], values: list[str], tenant: str) -> dict[str, Any]:
    rec: dict[str, Any] = {}
    attributes: dict[str, str] = {}
    for name, value in zip(names, values, strict=True):
        v = value.strip()
        if name.startswith(ATTR_PREFIX):
            if v:
                attributes[name[len(ATTR_PREFIX) :]] = v
            continue
        if name in ("status", "tenant") and not v:
            continue  # the column's default applies
        rec[name] = v if v or name in REQUIRED else None
    rec.setdefault("tenant", tenant)
    rec["attributes"] = attributes
    return rec


def _staging_rows(path: Path, tenant: str, result: ImportResult) -> Iterator[tuple[Any, ...]]:
    """Valid rows as staging tuples; every bad row lands in ``result.rejected``."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            reader = csv.reader(fh)
            line = 1
            try:
                first = next(reader, None)
                if first is None:
                    raise UserError(f"{path} is empty; it needs a header row such as id,email")
                names = _header(first, path)
                line = reader.line_num + 1
                for values in reader:
                    start, line = line, reader.line_num + 1
                    if not values or values == [""]:
                        continue
                    result.rows += 1
                    nul = next(
                        (n for n, v in zip(names, values, strict=False) if "\x00" in v), None
                    )
                    if nul is not None or any("\x00" in v for v in values):
                        # A NUL is not a bad value but a broken file (a binary, a
                        # wrong encoding): nothing of it is trusted, nothing imported.
                        where = f"column {nul}" if nul else "a field"
                        raise UserError(
                            f"{path}: line {start}: {where} holds a NUL byte; "
                            "nothing was imported (is it a text file in UTF-8?)"
                        )
                    if len(values) != len(names):
                        result.rejected.append(
                            Rejected(
                                start,
                                "row",
                                f"has {len(values)} fields, the header has {len(names)}",
                            )
                        )
                        continue
                    checked = check_row(_record(names, values, tenant))
                    if isinstance(checked, ContactWithId) and checked.tenant != tenant:
                        result.rejected.append(
                            Rejected(
                                start,
                                "tenant",
                                f"names tenant {checked.tenant!r}, but this import writes "
                                f"tenant {tenant!r} (--tenant); a contact never moves "
                                "between tenants",
                            )
                        )
                    elif isinstance(checked, ContactWithId):
                        result.accepted += 1
                        *row, attributes = checked.row()
                        yield (start, *row, orjson.dumps(attributes).decode())
                    else:
                        result.rejected.extend(Rejected(start, f, why) for f, why in checked)
            except csv.Error as exc:
                raise UserError(f"{path}: line {line}: not valid CSV ({exc})") from exc
    except UnicodeDecodeError as exc:
        raise UserError(f"{path} is not UTF-8 text ({exc.reason})") from exc
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror or exc}") from exc


async def import_csv(
    conn: asyncpg.Connection[Any], path: Path, *, tenant: str = "default"
) -> ImportResult:
    """Load ``path`` into contacts; returns counts and the rejected rows."""
    if not is_id(tenant):
        raise UserError(f"--tenant {tenant!r} must be {ID_RULE}")
    result = ImportResult()
    async with conn.transaction():
        await conn.execute(db.q("csv_create_staging"))
        await conn.copy_records_to_table(
            "crmsync_csv_staging",
            records=_staging_rows(path, tenant, result),
            columns=_STAGING_COLUMNS,
        )
        merged = await conn.fetchrow(db.q("csv_merge_staging"))
    assert merged is not None
    result.inserted = merged["inserted"]
    result.updated = merged["updated"]
    result.unchanged = merged["distinct_ids"] - result.inserted - result.updated
    result.superseded = result.accepted - merged["distinct_ids"]
    return result
