"""The sdist and the wheel build; the wheel installs at the demo lock's versions and runs
the quickstart outside the checkout, as a user of agentmesh would."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
import tomllib
import zipfile
from pathlib import Path

import pytest
from packaging.utils import canonicalize_name

from .locks import REQUIREMENTS, ROOT, read_lock

pytestmark = pytest.mark.slow

VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
GENERATED = sorted(p.name for p in (ROOT / "agentmesh" / "v1").glob("*.py*"))

INSTALLED = """
import importlib.metadata, json, sys
import agentmesh, agentmesh.v1.wire_pb2_grpc
from agentmesh._private.dashboard.app import _page
assert b"<title>agentmesh dashboard</title>" in _page()  # the page is package data
dists = {d.metadata["Name"]: d.version for d in importlib.metadata.distributions()}
print(json.dumps({"agentmesh": agentmesh.__file__, "prefix": sys.prefix, "dists": dists}))
"""


#: What builds, installs, tools and runs leave in a checkout (.gitignore), never copied.
LEFT_BEHIND = {".git", ".venv", "build", "dist", "sim-results", "__pycache__", ".hypothesis"}
LEFT_BEHIND |= {".mypy_cache", ".pytest_cache", ".ruff_cache", "test-artifacts"}


def _left_behind(folder: str, names: list[str]) -> set[str]:
    return {n for n in names if n in LEFT_BEHIND or n.endswith(".egg-info")}


def _run(*args: str | Path, cwd: Path) -> str:
    done = subprocess.run(
        [str(arg) for arg in args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, f"{args} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def test_the_sdist_and_the_wheel_build_install_and_run_outside_the_checkout() -> None:
    with tempfile.TemporaryDirectory(prefix="agentmesh-packaging-") as name:
        tmp = Path(name)
        source, dist = tmp / "source", tmp / "dist"
        venv, elsewhere = tmp / "venv", tmp / "elsewhere"
        # From a copy without what builds and installs leave: setuptools would put the files
        # an old agentmesh.egg-info lists into the sdist, whatever MANIFEST.in says now.
        shutil.copytree(ROOT, source, ignore=_left_behind)
        # The sdist first, then the wheel from the unpacked sdist: both must build.
        _run(sys.executable, "-m", "build", "--no-isolation", "--outdir", dist, source, cwd=tmp)
        (sdist,) = dist.glob("*.tar.gz")
        (wheel,) = dist.glob("*.whl")

        with tarfile.open(sdist) as archive:
            in_sdist = set(archive.getnames())
        top = f"agentmesh-{VERSION}"
        for member in [
            "pyproject.toml",
            "README.md",
            "protos/agentmesh/v1/wire.proto",
            "agentmesh/__init__.py",
            "agentmesh/py.typed",
            *(f"agentmesh/v1/{file}" for file in GENERATED),
        ]:
            assert f"{top}/{member}" in in_sdist, f"{sdist.name} lacks {member}"

        with zipfile.ZipFile(wheel) as archive:
            in_wheel = set(archive.namelist())
            entry_points = archive.read(f"{top}.dist-info/entry_points.txt").decode()
        for member in [
            "agentmesh/py.typed",
            "agentmesh/_private/dashboard/static/index.html",
            *(f"agentmesh/v1/{file}" for file in GENERATED),
        ]:
            assert member in in_wheel, f"{wheel.name} lacks {member}"
        assert not any(m.startswith(("tests/", "benchmarks/", "examples/")) for m in in_wheel)
        assert "agentmesh = agentmesh._private.cli:main" in entry_points

        # A fresh venv: the demo lock (hashes checked), then the wheel, which must want
        # nothing the lock does not pin.
        _run(sys.executable, "-m", "venv", "--without-pip", venv, cwd=tmp)
        python = venv / "bin" / "python"
        pip = [sys.executable, "-m", "pip", "--python", python, "--quiet", "install"]
        _run(*pip, "--require-hashes", "-r", REQUIREMENTS / "demo.txt", cwd=tmp)
        _run(*pip, wheel, cwd=tmp)

        # Run from a folder outside the checkout, isolated (-I: no PYTHONPATH, no current
        # folder on sys.path), so only the installed agentmesh can be imported.
        elsewhere.mkdir()
        shutil.copy(ROOT / "examples" / "quickstart.py", elsewhere)
        assert _run(python, "-I", "quickstart.py", cwd=elsewhere).split() == ["6", "12"]
        assert "usage: agentmesh" in _run(venv / "bin" / "agentmesh", "--help", cwd=elsewhere)

        seen = json.loads(_run(python, "-I", "-c", INSTALLED, cwd=elsewhere))
        site = Path(seen["prefix"]).resolve()
        assert Path(seen["agentmesh"]).resolve().is_relative_to(site), seen["agentmesh"]
        pinned = {
            pin.name: str(pin.version)
            for pin in read_lock(REQUIREMENTS / "demo.txt")
            if pin.requirement.marker is None or pin.requirement.marker.evaluate()
        }
        installed = {canonicalize_name(n): v for n, v in seen["dists"].items()}
        assert installed == {**pinned, "agentmesh": VERSION}
