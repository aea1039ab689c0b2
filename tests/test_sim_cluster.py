"""Reproducible across processes: the same seed gives the same trajectory on the
embedded mesh and with policies spread over 3 node processes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "predator_prey.py"


def _digest(nodes: int, tmp_path: Path) -> tuple[str, str]:
    args = ["--agents", "300", "--steps", "25", "--seed", "11", "--deadline", "30"]
    done = subprocess.run(
        [sys.executable, str(EXAMPLE), *args, "--nodes", str(nodes), "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    lines = {line.split()[0]: line for line in done.stdout.splitlines()[1:]}
    assert f"on {max(nodes, 1)} node(s)" in lines["policies"]
    return lines["digest"].split()[1], lines["defaults"]


def test_the_same_seed_gives_the_same_trajectory_on_1_node_and_on_3(tmp_path: Path) -> None:
    one, one_defaults = _digest(0, tmp_path)
    three, three_defaults = _digest(3, tmp_path)
    assert one_defaults == three_defaults == "  defaults     late 0, failed 0"
    assert one == three
