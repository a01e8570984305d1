"""What the two mock CRMs share: the answer shape and the duplicate count."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    payload: Any = None  # JSON-able; None = no body (204)
    wrote: bool = False  # the request changed records (a lost response can follow)


class Duplicates:
    """Records beyond the first per external id and per email, kept up to date on
    every write (stats are read while the mock serves: no full scans)."""

    __slots__ = ("by_email", "by_ext", "email", "ext")

    def __init__(self) -> None:
        self.by_ext: Counter[str] = Counter()
        self.by_email: Counter[str] = Counter()
        self.ext = 0
        self.email = 0

    def change(self, before: tuple[Any, Any] | None, after: tuple[Any, Any] | None) -> None:
        """One record's (external id, email) went from ``before`` to ``after`` (None: absent)."""
        old_ext, old_email = before or (None, None)
        new_ext, new_email = after or (None, None)
        self.ext += _move(self.by_ext, _key(old_ext), _key(new_ext))
        self.email += _move(self.by_email, _key(old_email, True), _key(new_email, True))

    def view(self) -> dict[str, int]:
        return {"external_id": self.ext, "email": self.email}


def _key(value: Any, fold: bool = False) -> str | None:
    if not value:
        return None
    return str(value).lower() if fold else str(value)


def _move(counter: Counter[str], old: str | None, new: str | None) -> int:
    """Move one record from key ``old`` to ``new``; the change in duplicates."""
    if old == new:
        return 0
    delta = 0
    if old is not None:
        counter[old] -= 1
        if counter[old] >= 1:
            delta -= 1
        else:
            del counter[old]
    if new is not None:
        counter[new] += 1
        if counter[new] > 1:
            delta += 1
    return delta


class Counts:
    """Writes applied per account, by kind."""

    __slots__ = ("created", "deleted", "updated")

    def __init__(self) -> None:
        self.created = 0
        self.updated = 0
        self.deleted = 0

    def view(self) -> dict[str, int]:
        return {"created": self.created, "updated": self.updated, "deleted": self.deleted}
