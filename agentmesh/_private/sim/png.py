"""`plot_png`: the main metrics of a run over time, as a PNG, with no dependency.

A small rasterizer: one panel per metric, stacked, each with its own scale, one line
per episode; labels in a 3x5 pixel font; written with zlib and struct as PNG. It has
no title and no axis ticks: `plot.plot` (matplotlib, the ``plot`` extra) draws the
figure to share; this one is for where nothing may be installed.
"""

from __future__ import annotations

import itertools
import struct
import zlib
from collections.abc import Iterable, Sequence
from pathlib import Path

from .results import EpisodeResult, metric_value, plotted_metrics

__all__ = ["plot_png"]

_GLYPHS = {
    "0": "111101101101111", "1": "010110010010111", "2": "111001111100111",
    "3": "111001111001111", "4": "101101111001001", "5": "111100111001111",
    "6": "111100111101111", "7": "111001001001001", "8": "111101111101111",
    "9": "111101111001111", "A": "010101111101101", "B": "110101110101110",
    "C": "011100100100011", "D": "110101101101110", "E": "111100110100111",
    "F": "111100110100100", "G": "011100101101011", "H": "101101111101101",
    "I": "111010010010111", "J": "001001001101010", "K": "101101110101101",
    "L": "100100100100111", "M": "101111111101101", "N": "110101101101101",
    "O": "010101101101010", "P": "110101110100100", "Q": "010101101110011",
    "R": "110101110101101", "S": "011100010001110", "T": "111010010010010",
    "U": "101101101101111", "V": "101101101101010", "W": "101101111111101",
    "X": "101101010101101", "Y": "101101010010010", "Z": "111001010100111",
    ".": "000000000000010", "-": "000000111000000", "_": "000000000000111",
    ":": "000010000010000", ",": "000000000010100", "/": "001001010100100",
    "=": "000111000111000", "(": "010100100100010", ")": "010001001001010",
    "%": "101001010100101", "+": "000010111010000", " ": "000000000000000",
}  # fmt: skip
_COLORS = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (255, 127, 14), (148, 103, 189)]
_INK, _GRID, _PAPER = (40, 40, 40), (225, 225, 225), (255, 255, 255)
_SCALE = 2  # pixels per font dot


class _Canvas:
    def __init__(self, width: int, height: int) -> None:
        self.width, self.height = width, height
        self.rows = [bytearray(bytes(_PAPER) * width) for _ in range(height)]

    def dot(self, x: int, y: int, color: tuple[int, int, int]) -> None:
        if 0 <= x < self.width and 0 <= y < self.height:
            self.rows[y][3 * x : 3 * x + 3] = bytes(color)

    def line(self, x0: int, y0: int, x1: int, y1: int, color: tuple[int, int, int]) -> None:
        dx, dy = abs(x1 - x0), -abs(y1 - y0)
        sx, sy = (1 if x0 < x1 else -1), (1 if y0 < y1 else -1)
        err = dx + dy
        while True:  # Bresenham, two pixels thick
            self.dot(x0, y0, color)
            self.dot(x0, y0 + 1, color)
            if x0 == x1 and y0 == y1:
                return
            e2 = 2 * err
            if e2 >= dy:
                err += dy
                x0 += sx
            if e2 <= dx:
                err += dx
                y0 += sy

    def text(self, x: int, y: int, text: str, color: tuple[int, int, int] = _INK) -> None:
        for char in text.upper():
            glyph = _GLYPHS.get(char, _GLYPHS["-"])
            for i, bit in enumerate(glyph):
                if bit == "1":
                    for px in range(_SCALE):
                        for py in range(_SCALE):
                            self.dot(x + (i % 3) * _SCALE + px, y + (i // 3) * _SCALE + py, color)
            x += 4 * _SCALE

    def png(self) -> bytes:
        raw = b"".join(b"\x00" + bytes(row) for row in self.rows)

        def chunk(kind: bytes, data: bytes) -> bytes:
            body = kind + data
            return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

        header = struct.pack(">IIBBBBB", self.width, self.height, 8, 2, 0, 0, 0)
        return (
            b"\x89PNG\r\n\x1a\n"
            + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(raw, 6))
            + chunk(b"IEND", b"")
        )


def _label(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"


def _panel(
    canvas: _Canvas, top: int, height: int, name: str, lines: Sequence[Sequence[float]]
) -> None:
    left, right = 70, canvas.width - 15
    values = [v for line in lines for v in line] or [0.0]
    low, high = min(values), max(values)
    if high == low:
        high, low = high + 1, low - 1
    plot_top, plot_bottom = top + 16, top + height - 8
    canvas.text(left, top + 2, name)
    for y in (plot_top, plot_bottom):
        canvas.line(left, y, right, y, _GRID)
    canvas.text(4, plot_top, _label(high))
    canvas.text(4, plot_bottom - 10, _label(low))
    canvas.line(left, plot_top, left, plot_bottom, _INK)
    longest = max((len(line) for line in lines), default=1)
    span = max(longest - 1, 1)
    for i, line in enumerate(lines):
        color = _COLORS[i % len(_COLORS)]
        points = [
            (
                left + round((right - left) * j / span),
                plot_bottom - round((plot_bottom - plot_top) * (v - low) / (high - low)),
            )
            for j, v in enumerate(line)
        ]
        if len(points) == 1:
            canvas.dot(*points[0], color)
        for (x0, y0), (x1, y1) in itertools.pairwise(points):
            canvas.line(x0, y0, x1, y1, color)


def plot_png(
    results: Iterable[EpisodeResult],
    path: str | Path,
    metrics: Sequence[str] | None = None,
    *,
    width: int = 800,
    panel_height: int = 120,
) -> Path:
    """Plot ``metrics`` per step (default: reward, the environment's metrics, and
    late + failed defaults), one panel each, one line per episode. Returns the path.

    Metric names are ``reward``, ``late``, ``failed``, ``defaults`` (late + failed),
    ``seconds``, ``agents``, or any key of the environment's `Env.metrics`. Needs no
    package; `plot` draws titled panels with axis ticks, as PNG or SVG, with matplotlib.
    """
    results = list(results)
    if metrics is None:
        metrics = plotted_metrics(results)
    canvas = _Canvas(width, panel_height * len(metrics) + 28)
    for k, name in enumerate(metrics):
        lines = [[metric_value(r, name) for r in result.records] for result in results]
        _panel(canvas, k * panel_height, panel_height, name, lines)
    canvas.text(70, canvas.height - 16, "step")
    path = Path(path)
    path.write_bytes(canvas.png())
    return path
