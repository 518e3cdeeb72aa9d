"""The command-line tool installs on Python 3.10-3.13 while the Functions app stays on 3.11."""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

import grimp
from mypy import api as mypy
from packaging.specifiers import SpecifierSet

ROOT = Path(__file__).resolve().parents[2]
SUPPORTED = ("3.10", "3.11", "3.12", "3.13")


def _cli_sources() -> list[Path]:
    """The files `distillery` runs: its own package and every module of this repo it imports."""
    graph = grimp.build_graph("distillery_cli", "shared", cache_dir=None)
    modules = graph.find_upstream_modules("distillery_cli", as_package=True) | graph.find_descendants("distillery_cli")
    files = []
    for module in sorted(modules | {"distillery_cli"}):
        path = ROOT.joinpath(*module.split("."))
        files.append(path / "__init__.py" if path.is_dir() else path.with_suffix(".py"))
    return files


def test_the_package_metadata_admits_3_10_to_3_13() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requires = SpecifierSet(project["requires-python"])
    assert all(requires.contains(version) for version in SUPPORTED), requires
    assert not requires.contains("3.9") and not requires.contains("3.14")


def test_the_cli_sources_parse_as_python_3_10() -> None:
    sources = _cli_sources()
    assert ROOT / "shared" / "datasets" / "check.py" in sources  # check-file's rules come along
    for path in sources:
        ast.parse(path.read_text(), filename=str(path), feature_version=(3, 10))


def _type_errors(python_version: str, sources: list[str]) -> set[str]:
    out, err, _ = mypy.run(["--python-version", python_version, "--follow-imports=silent", "--config-file=", *sources])
    assert not err, err
    return {line for line in out.splitlines() if ": error:" in line}


def test_the_cli_uses_no_standard_library_name_newer_than_3_10() -> None:
    """`datetime.UTC`, `enum.StrEnum`, `tomllib`…: the syntax check above cannot see them; typeshed can.
    Only what 3.10 lacks counts: errors mypy finds on 3.11 as well are not this test's business."""
    sources = [str(path) for path in _cli_sources()]
    assert _type_errors("3.10", sources) - _type_errors("3.11", sources) == set()
