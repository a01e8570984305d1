"""The product and the lab apart, read from the source trees (ast, nothing imported):
(a) no ``crmsync`` module imports ``crmsync_lab``; (b) no module under
``crmsync_lab.mock`` imports ``crmsync``, neither itself nor through the lab
modules it imports (the mock is the oracle: it shares no code with what it checks).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PRODUCT_SRC = ROOT / "src"
LAB_SRC = ROOT / "lab" / "src"
IMPORTERS = {"import_module", "__import__"}  # importlib.import_module("x"), __import__("x")


@dataclass(frozen=True, slots=True)
class Import:
    module: str  # the importer
    line: int
    name: str  # what it imports, absolute


def _top(name: str) -> str:
    return name.split(".", 1)[0]


def modules(src: Path, package: str) -> dict[str, Path]:
    """Every module of ``package`` under the source root ``src``, by dotted name."""
    out = {}
    for path in sorted((src / package).rglob("*.py")):
        parts = list(path.relative_to(src).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def imports_of(module: str, path: Path) -> Iterator[Import]:
    """What ``module`` (source at ``path``) imports, relative imports resolved; for
    ``from a import b`` both ``a`` and ``a.b`` (b may be a module)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(module, node.lineno, alias.name)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            yield Import(module, node.lineno, base)
            for alias in node.names:
                yield Import(module, node.lineno, f"{base}.{alias.name}")
        elif (
            isinstance(node, ast.Call)
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
            and getattr(node.func, "attr", getattr(node.func, "id", None)) in IMPORTERS
        ):
            yield Import(module, node.lineno, node.args[0].value)


def product_importing_lab(src: Path) -> list[Import]:
    """(a): imports of ``crmsync_lab`` by any ``crmsync`` module."""
    return [
        imp
        for module, path in modules(src, "crmsync").items()
        for imp in imports_of(module, path)
        if _top(imp.name) == "crmsync_lab"
    ]


def mock_reaching_product(src: Path) -> list[list[Import]]:
    """(b): for each way a ``crmsync_lab.mock`` module reaches ``crmsync``, the chain of
    imports (through lab modules and the packages they sit in)."""
    lab = modules(src, "crmsync_lab")
    graph = {m: list(imports_of(m, p)) for m, p in lab.items()}

    def loaded_with(name: str) -> list[str]:
        """Lab modules that importing ``name`` runs: its packages' ``__init__`` too."""
        parts = name.split(".")
        return [m for i in range(1, len(parts) + 1) if (m := ".".join(parts[:i])) in lab]

    found: list[list[Import]] = []
    for start in (m for m in lab if m.startswith("crmsync_lab.mock")):
        seen = {start}
        stack: list[tuple[str, list[Import]]] = [(start, [])]
        while stack:
            module, chain = stack.pop()
            for imp in graph[module]:
                if _top(imp.name) == "crmsync":
                    found.append([*chain, imp])
                    continue
                for nxt in loaded_with(imp.name):
                    if nxt not in seen:
                        seen.add(nxt)
                        stack.append((nxt, [*chain, imp]))
    return found


def _say(chain: list[Import]) -> str:
    return " -> ".join(f"{i.module}:{i.line} imports {i.name}" for i in chain)


def test_the_product_never_imports_the_lab() -> None:
    assert len(modules(PRODUCT_SRC, "crmsync")) > 40  # the tree was found and read
    found = product_importing_lab(PRODUCT_SRC)
    assert found == [], "\n".join(_say([i]) for i in found)


def test_the_mock_never_imports_the_product() -> None:
    assert "crmsync_lab.mock.server" in modules(LAB_SRC, "crmsync_lab")
    found = mock_reaching_product(LAB_SRC)
    assert found == [], "\n".join(_say(c) for c in found)


def test_importing_every_mock_module_loads_no_product_module() -> None:
    """The same rule at run time: what the ast cannot see (an import built at run time)."""
    mock = [m for m in modules(LAB_SRC, "crmsync_lab") if m.startswith("crmsync_lab.mock")]
    code = (
        "import importlib, sys\n"
        f"for m in {mock!r}: importlib.import_module(m)\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'crmsync'))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert done.stdout.strip() == "[]", done.stdout


# -- the checks themselves can fail: each rule broken on purpose in a small tree ---------


def _tree(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


@pytest.mark.parametrize(
    "source",
    [
        "import crmsync_lab\n",
        "import crmsync_lab.mock.server as s\n",
        "from crmsync_lab import demo\n",
        "from crmsync_lab.harness.cluster import Cluster\n",
        "def f():\n    from crmsync_lab.bench import suite\n",
        "import importlib\nimportlib.import_module('crmsync_lab.cli')\n",
        "__import__('crmsync_lab')\n",
    ],
)
def test_a_product_import_of_the_lab_is_found(tmp_path: Path, source: str) -> None:
    src = _tree(tmp_path, {"crmsync/__init__.py": "", "crmsync/x/mod.py": source})
    assert {i.module for i in product_importing_lab(src)} == {"crmsync.x.mod"}


@pytest.mark.parametrize(
    ("files", "chain"),
    [
        ({"crmsync_lab/mock/a.py": "import crmsync\n"}, ["crmsync_lab.mock.a"]),
        ({"crmsync_lab/mock/a.py": "from crmsync.ratelimit import parse_rate_limit\n"}, None),
        ({"crmsync_lab/mock/a.py": "from crmsync import clock\n"}, None),
        (
            {
                "crmsync_lab/mock/a.py": "from crmsync_lab import queries\n",
                "crmsync_lab/queries.py": "from crmsync.db import NamedQueries\n",
            },
            ["crmsync_lab.mock.a", "crmsync_lab.queries"],
        ),
        (
            {
                "crmsync_lab/mock/a.py": "from ..harness import helpers\n",
                "crmsync_lab/harness/__init__.py": "import crmsync.errors\n",
                "crmsync_lab/harness/helpers.py": "",
            },
            ["crmsync_lab.mock.a", "crmsync_lab.harness"],
        ),
        (
            {"crmsync_lab/mock/__init__.py": "from crmsync import db\n"},
            ["crmsync_lab.mock"],
        ),
    ],
)
def test_a_mock_reaching_the_product_is_found(
    tmp_path: Path, files: dict[str, str], chain: list[str] | None
) -> None:
    base = {"crmsync_lab/__init__.py": "", "crmsync_lab/mock/__init__.py": ""}
    src = _tree(tmp_path, {**base, **files})
    found = mock_reaching_product(src)
    assert found, "the rule broken on purpose was not found"
    if chain is not None:
        assert [i.module for i in found[0]] == chain
    assert all(_top(c[-1].name) == "crmsync" for c in found)


def test_what_each_side_may_import(tmp_path: Path) -> None:
    """The product its own modules (and a string naming the lab); the mock the mock."""
    src = _tree(
        tmp_path,
        {
            "crmsync/__init__.py": "",
            "crmsync/a.py": "from crmsync import db\nfrom . import b\nimport crmsync.b\n",
            "crmsync/b.py": "LAB = 'crmsync_lab is a string here, not an import'\n",
            "crmsync_lab/__init__.py": "",
            "crmsync_lab/mock/__init__.py": "",
            "crmsync_lab/mock/a.py": "from crmsync_lab.mock import b\nfrom . import b as c\n",
            "crmsync_lab/mock/b.py": "import os\nimport crmsync_labels_are_not_crmsync\n",
        },
    )
    assert product_importing_lab(src) == []
    assert mock_reaching_product(src) == []


def test_the_checked_trees_are_the_installed_ones() -> None:
    """The tests read the files the interpreter runs (editable installs of both)."""
    import crmsync
    import crmsync_lab

    assert Path(crmsync.__file__).resolve().parent == PRODUCT_SRC / "crmsync"
    assert Path(crmsync_lab.__file__).resolve().parent == LAB_SRC / "crmsync_lab"
