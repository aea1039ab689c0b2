"""The locks in requirements/, as the tests read them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
REQUIREMENTS = ROOT / "requirements"


@dataclass(frozen=True)
class Pin:
    name: str
    version: Version
    requirement: Requirement
    hashes: tuple[str, ...]


def read_lock(path: Path) -> list[Pin]:
    """The pins of a pip requirements file as uv writes it: `name==version ; marker \\`
    followed by `--hash=sha256:...` continuation lines and `# via` comments."""
    pins = []
    for line in path.read_text().replace("\\\n", " ").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        spec, *hashes = (part.strip() for part in line.split(" --hash="))
        requirement = Requirement(spec)
        (clause,) = requirement.specifier
        assert clause.operator == "==", f"{path.name}: {spec} is not pinned"
        name = canonicalize_name(requirement.name)
        pins.append(Pin(name, Version(clause.version), requirement, tuple(hashes)))
    assert pins, f"{path.name} pins nothing"
    return pins
