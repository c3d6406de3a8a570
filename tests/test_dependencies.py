"""Every package the code imports is a declared dependency ([project.dependencies] or an optional extra such as
deepspeed, imported only where it is used): embed_lm/, benchmarks/ and scripts/.

    python -m pytest -q tests/test_dependencies.py
"""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
LOCAL = {"embed_lm", "benchmarks", "tests"}


def name(requirement: str) -> str:
    return re.split(r"[<>=!~;\[ ]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def imports(path: Path) -> set[str]:
    """Top-level module names imported anywhere in the file (absolute imports only)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


def third_party(folder: str) -> set[str]:
    files = list((ROOT / folder).rglob("*.py"))
    local = LOCAL | {p.stem for p in files}
    return {m for p in files for m in imports(p)} - set(sys.stdlib_module_names) - local


def distributions(modules: set[str]) -> dict[str, set[str]]:
    """Module -> the installed distributions that provide it (empty when not installed here)."""
    table = importlib.metadata.packages_distributions()
    return {m: {d.lower().replace("_", "-") for d in table.get(m, [])} for m in modules}


def undeclared(modules: set[str], declared: set[str]) -> dict[str, set[str]]:
    return {m: ds for m, ds in distributions(modules).items() if ds and not ds & declared}


REQUIRED = {name(r) for r in PROJECT["dependencies"]}
OPTIONAL = {name(r) for extra in PROJECT["optional-dependencies"].values() for r in extra}


def test_package_imports_are_declared():
    assert undeclared(third_party("embed_lm"), REQUIRED | OPTIONAL) == {}


def test_benchmark_and_script_imports_are_declared():
    assert undeclared(third_party("benchmarks") | third_party("scripts"), REQUIRED | OPTIONAL) == {}


def test_the_check_sees_an_undeclared_import():
    assert "pyarrow" in undeclared({"pyarrow", "json"}, REQUIRED - {"pyarrow"})
