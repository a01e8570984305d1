"""Commands of other distributions join the ``crmsync`` CLI through the
``crmsync.cli`` entry-point group: the lab's when it is installed, none when it
is not, and a broken one is named without taking the product's commands along."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib.metadata import EntryPoint

import pytest
import typer
from typer.main import get_command
from typer.testing import CliRunner

from crmsync.cli import app
from crmsync.cli.main import EXTENSIONS, add_extensions

LAB = EntryPoint("lab", "crmsync_lab.cli:register", EXTENSIONS)
LAB_COMMANDS = {"bench", "demo", "mock-crm"}


def commands(root: typer.Typer) -> set[str]:
    group = get_command(root)
    return set(getattr(group, "commands", {}))


def fresh() -> typer.Typer:
    root = typer.Typer()

    # Two product commands: typer makes a group of them (one alone is a plain command).
    @root.command()
    def migrate() -> None:
        """Migrate."""

    @root.command()
    def worker() -> None:
        """Work."""

    return root


def test_the_lab_entry_point_adds_its_commands() -> None:
    root = fresh()
    assert add_extensions(root, [LAB]) == ["lab"]
    assert commands(root) == {"migrate", "worker", *LAB_COMMANDS}


def test_without_extensions_the_lab_commands_are_absent() -> None:
    root = fresh()
    assert add_extensions(root, []) == []
    assert commands(root) == {"migrate", "worker"}


def test_a_broken_extension_is_named_and_skipped(capsys: pytest.CaptureFixture[str]) -> None:
    root = fresh()
    broken = EntryPoint("broken", "crmsync_no_such_module:register", EXTENSIONS)
    assert add_extensions(root, [broken, LAB]) == ["lab"]
    assert commands(root) == {"migrate", "worker", *LAB_COMMANDS}
    said = " ".join(capsys.readouterr().err.split())
    assert "extension 'broken' (crmsync_no_such_module:register) failed to load" in said


def test_the_installed_cli_has_the_lab_commands() -> None:
    """The lab's pyproject declares the entry point this checkout installs."""
    assert commands(app) >= LAB_COMMANDS
    for name in sorted(LAB_COMMANDS):
        result = CliRunner().invoke(app, [name, "--help"])
        assert result.exit_code == 0, result.output


# The product as if installed alone: no crmsync.cli entry point, crmsync_lab not
# importable. One interpreter runs every command line and prints what each did.
ALONE = """
import importlib.abc, importlib.metadata, json, sys

class NoLab(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "crmsync_lab":
            raise ModuleNotFoundError(f"No module named {name!r}")
        return None

sys.meta_path.insert(0, NoLab())
real = importlib.metadata.entry_points
importlib.metadata.entry_points = (
    lambda **kw: [] if kw.get("group") == "crmsync.cli" else real(**kw)
)
from typer.testing import CliRunner
from crmsync.cli import app

runs = {}
for line in sys.argv[1:]:
    result = CliRunner().invoke(app, line.split())
    runs[line] = [result.exit_code, result.output]
runs["lab loaded"] = [0, str(sorted(m for m in sys.modules if m.startswith("crmsync_lab")))]
print(json.dumps(runs))
"""


@pytest.fixture(scope="module")
def alone() -> dict[str, tuple[int, str]]:
    lines = ["--help", "status --help", "worker --help", "demo", "mock-crm --help"]
    done = subprocess.run(
        [sys.executable, "-c", ALONE, *lines], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0 and done.stderr == "", done.stderr
    return {k: (code, out) for k, (code, out) in json.loads(done.stdout).items()}


def test_the_product_alone_runs_without_the_lab(alone: dict[str, tuple[int, str]]) -> None:
    assert alone["lab loaded"] == (0, "[]")
    for line in ("--help", "status --help", "worker --help"):
        assert alone[line][0] == 0, alone[line]
    listed = {row.split()[1] for row in alone["--help"][1].splitlines() if row.startswith("│ ")}
    assert {"worker", "up", "status", "connections"} <= listed
    assert not listed & LAB_COMMANDS, listed


def test_the_product_alone_refuses_a_lab_command(alone: dict[str, tuple[int, str]]) -> None:
    for line in ("demo", "mock-crm --help"):
        code, out = alone[line]
        assert code == 2 and f"No such command '{line.split()[0]}'" in out, out
