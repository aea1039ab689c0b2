"""Plots of a run: `sim.plot` (matplotlib: PNG or SVG) and `sim.plot_png` (built in)."""

from __future__ import annotations

import struct
import sys
import xml.etree.ElementTree as ET
import zlib
from pathlib import Path

import pytest

from agentmesh import sim

SVG = "{http://www.w3.org/2000/svg}"


def _episode(episode: int, seed: int, steps: int = 12) -> sim.EpisodeResult:
    records = tuple(
        sim.StepRecord(episode, i, 30 - i, 1.5 * i + seed, i % 3, i % 2, 0.01, {"prey": 30.0 - i})
        for i in range(steps)
    )
    return sim.EpisodeResult(episode, seed, steps, 0.1, {}, {}, {}, {}, records, "x")


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def _svg(path: Path) -> ET.Element:
    root = ET.parse(path).getroot()  # a well-formed SVG document, or this raises
    assert root.tag == f"{SVG}svg"
    return root


def _svg_texts(path: Path) -> list[str]:
    return [text.text or "" for text in _svg(path).iter(f"{SVG}text")]


def _ticks(path: Path, axis: str) -> list[str]:
    """The labels of the ticks on every ``axis`` ("x" or "y") of the figure."""
    groups = [g for g in _svg(path).iter(f"{SVG}g") if g.get("id", "").startswith(f"{axis}tick_")]
    return [text.text or "" for g in groups for text in g.iter(f"{SVG}text")]


def test_the_svg_has_a_title_titled_panels_and_labelled_axes(tmp_path: Path) -> None:
    path = sim.plot([_episode(0, 7)], tmp_path / "run.svg", title="Predator-prey, seed 7")
    assert path == tmp_path / "run.svg"
    texts = _svg_texts(path)
    assert "Predator-prey, seed 7" in texts  # the figure's title
    for panel in (
        "Reward per step (sum over agents)",
        "prey (the environment's metric)",
        "Default actions per step (late + failed)",
    ):
        assert panel in texts
    assert texts.count("step") == 1  # the shared x axis, labelled once
    assert {"reward", "prey", "agents"} <= set(texts)  # the y axes
    assert {"0", "10"} <= set(_ticks(path, "x"))  # labelled ticks on the step axis
    assert {"0", "10", "20"} <= set(_ticks(path, "y"))  # ... and on the panels' axes


def test_the_default_title_names_the_episode_and_several_get_a_legend(tmp_path: Path) -> None:
    texts = _svg_texts(sim.plot([_episode(0, 7)], tmp_path / "one.svg"))
    assert "Episode 0 (seed 7): 12 steps" in texts
    assert "episode 0 (seed 7)" not in texts  # one line: no legend
    texts = _svg_texts(sim.plot([_episode(0, 7), _episode(1, 8)], tmp_path / "two.svg"))
    assert "2 episodes" in texts
    assert {"episode 0 (seed 7)", "episode 1 (seed 8)"} <= set(texts)


def test_the_png_is_one_panel_per_metric(tmp_path: Path) -> None:
    path = sim.plot(
        [_episode(0, 7)], tmp_path / "run.png", ["reward", "late"], width=6, panel_height=2
    )
    assert _png_size(path.read_bytes()) == (600, 2 * 200 + 60)  # 100 pixels an inch


def test_the_same_results_give_the_same_svg(tmp_path: Path) -> None:
    first = sim.plot([_episode(0, 7)], tmp_path / "a.svg").read_bytes()
    assert sim.plot([_episode(0, 7)], tmp_path / "b.svg").read_bytes() == first


def test_plot_writes_png_or_svg_only(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="png or svg"):
        sim.plot([_episode(0, 7)], tmp_path / "run.pdf")
    assert not (tmp_path / "run.pdf").exists()


def test_without_matplotlib_plot_names_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if not installed
    with pytest.raises(ModuleNotFoundError, match=r"agentmesh\[plot\]"):
        sim.plot([_episode(0, 7)], tmp_path / "run.png")
    # The built-in rasterizer needs nothing.
    assert _png_size(sim.plot_png([_episode(0, 7)], tmp_path / "run.png").read_bytes())


def test_plot_png_draws_the_metrics_with_nothing_installed(tmp_path: Path) -> None:
    record = sim.StepRecord(0, 0, 3, 1.5, 0, 1, 0.01, {"prey": 10.0})
    results = [
        sim.EpisodeResult(0, 0, 1, 0.1, {}, {}, {}, {}, (record, record), "x"),
    ]
    data = sim.plot_png(results, tmp_path / "p.png", width=300, panel_height=100).read_bytes()
    width, height = _png_size(data)
    assert (width, height) == (300, 3 * 100 + 28)  # reward, prey, defaults
    start = data.index(b"IDAT") + 4
    length = struct.unpack(">I", data[start - 8 : start - 4])[0]
    pixels = zlib.decompress(data[start : start + length])
    assert len(pixels) == height * (1 + 3 * width)
    assert pixels.count(b"\x1f\x77\xb4") > 100  # the first line's colour is drawn
