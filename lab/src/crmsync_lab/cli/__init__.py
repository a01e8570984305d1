"""The lab's commands on the ``crmsync`` command line: ``demo``, ``bench``, ``mock-crm``.

Declared as the ``crmsync.cli`` entry point ``lab`` (lab/pyproject.toml); the
product's CLI calls ``register`` with its root app.
"""

from __future__ import annotations

import typer

from crmsync_lab.cli import bench, demo, mock


def register(app: typer.Typer) -> None:
    """Add the lab's commands to the root ``crmsync`` app."""
    for module in (bench, demo, mock):
        app.add_typer(module.app)
