"""Every example runs, as a user would run it, and prints what it promises."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _run(*args: str) -> str:
    done = subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_quickstart_prints_what_the_readme_says() -> None:
    assert _run(str(EXAMPLES / "quickstart.py")).split() == ["6", "12"]


def test_demo_runs_small_and_conserves_cash() -> None:
    out = _run(str(EXAMPLES / "demo.py"), "--agents", "20", "--rounds", "3", "--seed", "1")
    assert "conservation  ok" in out
    assert "20 traders" in out


def test_every_example_is_covered() -> None:
    assert {p.name for p in EXAMPLES.glob("*.py")} == {"quickstart.py", "demo.py"}
