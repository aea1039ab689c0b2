"""The checked-in wire code is what protos/ generates today."""

from __future__ import annotations

from pathlib import Path

from agentmesh._private.protogen import ROOT, generate


def test_generated_code_is_fresh(tmp_path: Path) -> None:
    fresh = generate(tmp_path)
    assert fresh, "protoc generated nothing"
    for path in fresh:
        relative = path.relative_to(tmp_path)
        checked_in = ROOT / relative
        assert checked_in.exists(), f"{relative} is not checked in: run `make proto`"
        assert checked_in.read_bytes() == path.read_bytes(), f"{relative} is stale: `make proto`"


def test_generated_code_says_do_not_edit() -> None:
    for path in (ROOT / "agentmesh" / "v1").glob("*_pb2*.py"):
        assert "DO NOT EDIT" in path.read_text()[:300], path
