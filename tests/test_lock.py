"""The locks in requirements/ pin what pyproject.toml asks for, and the tests run in them."""

from __future__ import annotations

import importlib.metadata
import tomllib
from typing import Any

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from .locks import REQUIREMENTS, ROOT, Pin, read_lock

LOCKS = ("demo.txt", "dev.txt")


def pyproject() -> dict[str, Any]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def wanted(*extras: str) -> list[Requirement]:
    """What installing agentmesh with these extras asks for, self-references expanded, and
    what building it asks for (the Makefile builds it without build isolation)."""
    toml = pyproject()
    project = toml["project"]
    found = [Requirement(r) for r in toml["build-system"]["requires"]]
    todo = [Requirement(r) for r in project["dependencies"]]
    todo.extend(Requirement(f"agentmesh[{extra}]") for extra in extras)
    seen: set[str] = set()
    while todo:
        requirement = todo.pop()
        if canonicalize_name(requirement.name) != "agentmesh":
            found.append(requirement)
            continue
        for extra in sorted(requirement.extras - seen):
            seen.add(extra)
            todo.extend(Requirement(r) for r in project["optional-dependencies"][extra])
    return found


def test_every_package_is_pinned_with_hashes() -> None:
    for lock in LOCKS:
        for pin in read_lock(REQUIREMENTS / lock):
            assert pin.hashes, f"{lock}: {pin.name} has no hash"
            assert all(h.startswith("sha256:") and len(h) == 7 + 64 for h in pin.hashes), pin


def test_the_demo_lock_pins_the_dev_versions() -> None:
    def key(pin: Pin) -> tuple[str, str, Version]:
        return pin.name, str(pin.requirement.marker), pin.version

    dev = {key(pin) for pin in read_lock(REQUIREMENTS / "dev.txt")}
    for pin in read_lock(REQUIREMENTS / "demo.txt"):
        assert key(pin) in dev, f"demo.txt pins {pin.requirement}, dev.txt does not"


@pytest.mark.parametrize(("lock", "extras"), [("demo.txt", ()), ("dev.txt", ("dev",))])
def test_the_locks_satisfy_pyproject(lock: str, extras: tuple[str, ...]) -> None:
    pins = read_lock(REQUIREMENTS / lock)
    for requirement in wanted(*extras):
        versions = [p.version for p in pins if p.name == canonicalize_name(requirement.name)]
        assert versions, f"{lock} lacks {requirement}: run `make lock`"
        for version in versions:
            assert requirement.specifier.contains(version, prereleases=True), (
                f"{lock} pins {requirement.name}=={version}, pyproject.toml wants "
                f"{requirement}: run `make lock`"
            )


def test_the_demo_lock_holds_no_development_tool() -> None:
    names = {pin.name for pin in read_lock(REQUIREMENTS / "demo.txt")}
    extras = ("pettingzoo", "matplotlib", "tqdm", "types-tqdm", "prometheus-client")  # dev only
    for tool in ("grpcio-tools", "mypy", "ruff", "pytest", "hypothesis", "pygame", *extras):
        assert tool not in names, f"make demo would install {tool}"


def test_these_tests_run_in_the_dev_lock() -> None:
    for pin in read_lock(REQUIREMENTS / "dev.txt"):
        if pin.requirement.marker is not None and not pin.requirement.marker.evaluate():
            continue
        installed = importlib.metadata.version(pin.name)
        assert Version(installed) == pin.version, (
            f"{pin.name} {installed} is installed, requirements/dev.txt pins {pin.version}: "
            "run the tests with `make test`, which installs the lock"
        )
