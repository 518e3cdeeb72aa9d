"""The remote build in Azure installs exactly the run-time packages the tests ran with.

`requirements.txt` names the app's direct dependencies and applies `requirements.lock` as pip
constraints; the lock must pin the whole closure, at the versions installed here.
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
FIX = "run `make lock` and commit requirements.lock"


def _lines(name: str) -> list[str]:
    return [line.strip() for line in (ROOT / name).read_text().splitlines() if line.strip() and line[0] != "#"]


def _pins(lines: list[str]) -> dict[str, str]:
    pins = {}
    for line in lines:
        requirement = Requirement(line)
        (specifier,) = requirement.specifier
        assert specifier.operator == "==", f"{line}: pin an exact version"
        pins[canonicalize_name(requirement.name)] = specifier.version
    return pins


def _closure(roots: list[Requirement]) -> set[str]:
    """Every distribution the roots need in this environment, following extras and markers."""
    seen: set[str] = set()
    pending = [(requirement, "") for requirement in roots]
    while pending:
        requirement, extra = pending.pop()
        if requirement.marker is not None and not requirement.marker.evaluate({"extra": extra}):
            continue
        name = canonicalize_name(requirement.name)
        pending += [
            (Requirement(needed), wanted)
            for wanted in ("", *requirement.extras)
            for needed in importlib.metadata.requires(name) or []
            if wanted or name not in seen
        ]
        seen.add(name)
    return seen


def test_requirements_apply_the_lock_as_constraints() -> None:
    assert "-c requirements.lock" in _lines("requirements.txt")
    assert "requirements.lock" not in _lines(".funcignore"), "the remote build needs the lock"


def test_direct_dependencies_are_pinned_alike_in_the_lock() -> None:
    direct = _pins([line for line in _lines("requirements.txt") if not line.startswith("-")])
    locked = _pins(_lines("requirements.lock"))
    assert {name: locked.get(name) for name in direct} == direct, FIX


def test_the_lock_pins_the_installed_closure_of_the_run_time_dependencies() -> None:
    roots = [Requirement(line) for line in _lines("requirements.txt") if not line.startswith("-")]
    installed = {name: importlib.metadata.version(name) for name in _closure(roots)}
    locked = _pins(_lines("requirements.lock"))
    assert {name: locked.get(name) for name in installed} == installed, FIX
    assert not locked.keys() - installed.keys(), f"the lock pins packages the app no longer needs: {FIX}"
