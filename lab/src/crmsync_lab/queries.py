"""The lab's named SQL queries (``crmsync_lab/sql/*.sql``), loaded as the product loads its own."""

from __future__ import annotations

from crmsync.db import NamedQueries

q = NamedQueries("crmsync_lab", "sql")
