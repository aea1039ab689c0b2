"""`sim.ProgressBar`: tqdm when it is installed, a plain line otherwise; silent in pipes."""

from __future__ import annotations

import io
import sys

import pytest

from agentmesh import sim


def _run(bar: sim.ProgressBar, steps: int) -> None:
    for step in range(steps):
        bar.advance(note=f"reward {step}")
    bar.close()


@pytest.mark.parametrize("tqdm", [True, False], ids=["tqdm", "plain"])
def test_the_bar_draws_only_on_a_terminal(monkeypatch: pytest.MonkeyPatch, tqdm: bool) -> None:
    if not tqdm:
        monkeypatch.setitem(sys.modules, "tqdm", None)  # as if not installed
    quiet = io.StringIO()  # not a terminal
    _run(sim.ProgressBar(10, stream=quiet), 10)
    assert quiet.getvalue() == ""
    shown = io.StringIO()
    _run(sim.ProgressBar(10, stream=shown, enabled=True), 10)
    assert "10/10 steps" in shown.getvalue()
    assert "reward 9" in shown.getvalue()  # the latest note
    assert shown.getvalue().endswith("\n")


def test_tqdm_draws_the_bar_when_it_is_installed() -> None:
    shown = io.StringIO()
    _run(sim.ProgressBar(4, "episodes", stream=shown, enabled=True), 4)
    last = shown.getvalue().rstrip("\n").rsplit("\r", 1)[-1]
    assert last.startswith("100%|")  # tqdm's percentage and bar
    assert "4/4 episodes [" in last  # ... and its elapsed<remaining time
    assert "episodes/s, reward 3]" in last


def test_without_tqdm_the_plain_line_is_drawn(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tqdm", None)
    shown = io.StringIO()
    _run(sim.ProgressBar(4, "episodes", stream=shown, enabled=True, width=8), 4)
    assert shown.getvalue().rstrip("\n").rsplit("\r", 1)[-1].startswith("[########] 4/4 episodes")
