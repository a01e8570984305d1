"""The ``crmsync`` command line (``crmsync.cli.main``)."""

from __future__ import annotations

from crmsync.cli.main import app, main

__all__ = ["app", "main"]
