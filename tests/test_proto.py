"""The checked-in wire code is what protos/ generates today."""

from __future__ import annotations

import importlib.metadata
import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import Version

from agentmesh._private.protogen import ROOT, generate

V1 = ROOT / "agentmesh" / "v1"


def test_generated_code_is_fresh(tmp_path: Path) -> None:
    fresh = generate(tmp_path)
    assert fresh, "protoc generated nothing"
    tools = importlib.metadata.version("grpcio-tools")
    for path in fresh:
        relative = path.relative_to(tmp_path)
        checked_in = ROOT / relative
        assert checked_in.exists(), f"{relative} is not checked in: run `make proto`"
        assert checked_in.read_bytes() == path.read_bytes(), (
            f"{relative} is stale for grpcio-tools {tools} (pyproject.toml pins the generator "
            f"that wrote it): `make proto`"
        )


def test_generated_code_says_do_not_edit() -> None:
    for path in V1.glob("*_pb2*.py"):
        assert "DO NOT EDIT" in path.read_text()[:300], path


def generated_for() -> dict[str, Version]:
    """The runtime versions the checked-in code refuses to run below, from its headers."""
    pb2 = re.search(r"Protobuf Python Version: (\S+)", (V1 / "wire_pb2.py").read_text())
    grpc = re.search(r"GRPC_GENERATED_VERSION = '(\S+)'", (V1 / "wire_pb2_grpc.py").read_text())
    assert pb2, "wire_pb2.py no longer says its protobuf version"
    assert grpc, "wire_pb2_grpc.py no longer says its grpcio version"
    return {"protobuf": Version(pb2[1]), "grpcio": Version(grpc[1])}


def test_the_generator_is_pinned_at_the_version_that_wrote_the_code() -> None:
    dev = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    tools = next(
        Requirement(r)
        for r in dev["optional-dependencies"]["dev"]
        if Requirement(r).name == "grpcio-tools"
    )
    assert str(tools.specifier) == f"=={generated_for()['grpcio']}"


def test_the_runtime_floors_are_what_the_generated_code_needs() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    runtime = {Requirement(r).name: Requirement(r) for r in project["dependencies"]}
    for name, needed in generated_for().items():
        floors = [Version(c.version) for c in runtime[name].specifier if c.operator == ">="]
        assert floors, f"pyproject.toml sets no floor for {name}"
        assert max(floors) >= needed, (
            f"pyproject.toml allows {runtime[name]}, the code in agentmesh/v1 needs "
            f"{name}>={needed}"
        )
