"""`plot`: the main metrics of a run over time, as a PNG or SVG figure, with matplotlib.

One titled panel per metric, stacked, sharing the step axis; one line per episode. It
needs matplotlib, the ``plot`` extra (``pip install 'agentmesh[plot]'``), and raises
`ModuleNotFoundError` saying so without it; `png.plot_png` draws a plainer PNG with
nothing installed.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

from .results import EpisodeResult, metric_value, plotted_metrics

__all__ = ["FORMATS", "plot"]

#: The formats `plot` writes, named by the path's suffix.
FORMATS = ("png", "svg")

#: A panel's title and its y axis' label, for the metrics every step records.
_LABELS = {
    "reward": ("Reward per step (sum over agents)", "reward"),
    "late": ("Late policies per step (given the default action)", "agents"),
    "failed": ("Failed policies per step (given the default action)", "agents"),
    "defaults": ("Default actions per step (late + failed)", "agents"),
    "seconds": ("Wall time per step", "seconds"),
    "agents": ("Live agents per step", "agents"),
}


def _format(path: Path) -> str:
    kind = path.suffix.lower().lstrip(".")
    if kind not in FORMATS:
        raise ValueError(f"plot writes {' or '.join(FORMATS)}, named by the suffix: {path}")
    return kind


def _default_title(results: Sequence[EpisodeResult]) -> str:
    if len(results) == 1:
        only = results[0]
        return f"Episode {only.episode} (seed {only.seed}): {only.steps} steps"
    return f"{len(results)} episodes"


def plot(
    results: Iterable[EpisodeResult],
    path: str | Path,
    metrics: Sequence[str] | None = None,
    *,
    title: str | None = None,
    width: float = 8.0,
    panel_height: float = 2.2,
) -> Path:
    """Plot ``metrics`` per step, one titled panel each, one line per episode, and
    write the figure to ``path`` as PNG or SVG (by its suffix). Returns the path.

    Metric names are those of `plot_png`: ``reward``, ``late``, ``failed``,
    ``defaults`` (late + failed), ``seconds``, ``agents``, or any key of the
    environment's `Env.metrics`; the default is reward, the environment's metrics,
    and defaults. ``title`` (default: the episode and its seed, or how many episodes)
    heads the figure; ``width`` and ``panel_height`` are in inches (100 pixels each in
    a PNG). Several episodes get a legend naming each one and its seed.

    Raises `ModuleNotFoundError` without matplotlib (``pip install
    'agentmesh[plot]'``), and `ValueError` for a suffix other than ``.png`` or
    ``.svg``.

    Example::

        result = await sim.run_episode(mesh, env, policies, seed=7)
        sim.plot([result], "run.svg", title="Predator-prey, seed 7")
    """
    path = Path(path)
    kind = _format(path)
    try:  # imported here: matplotlib is optional, and slow to import
        from matplotlib import rc_context
        from matplotlib.figure import Figure
        from matplotlib.ticker import MaxNLocator
    except ImportError as exc:
        raise ModuleNotFoundError(
            "agentmesh.sim.plot needs matplotlib: pip install 'agentmesh[plot]' "
            "(sim.plot_png writes a plainer PNG with nothing installed)",
            name="matplotlib",
        ) from exc

    results = list(results)
    names = list(metrics) if metrics is not None else plotted_metrics(results)
    if not names:
        raise ValueError("nothing to plot: metrics is empty")
    # In an SVG, text stays text (searchable, and smaller), and the same figure gives
    # the same file.
    with rc_context({"svg.fonttype": "none", "svg.hashsalt": "agentmesh"}):
        figure = Figure(figsize=(width, panel_height * len(names) + 0.6), dpi=100)
        axes = figure.subplots(len(names), 1, sharex=True, squeeze=False)[:, 0]
        for ax, name in zip(axes, names, strict=True):
            panel_title, unit = _LABELS.get(name, (f"{name} (the environment's metric)", name))
            for result in results:
                steps = [r.step for r in result.records]
                values = [metric_value(r, name) for r in result.records]
                label = f"episode {result.episode} (seed {result.seed})"
                ax.plot(steps, values, marker="." if len(steps) < 2 else None, label=label)
            ax.set_title(panel_title, loc="left", fontsize="medium")
            ax.set_ylabel(unit)
            if unit == "agents":  # counts: no tick between two whole numbers
                ax.yaxis.set_major_locator(MaxNLocator(integer=True))
            ax.grid(True, alpha=0.3)
        axes[-1].set_xlabel("step")
        axes[-1].xaxis.set_major_locator(MaxNLocator(integer=True))
        if len(results) > 1:
            axes[0].legend(fontsize="small")
        figure.suptitle(title if title is not None else _default_title(results))
        figure.set_layout_engine("constrained")
        metadata = {"Date": None} if kind == "svg" else {}
        figure.savefig(path, format=kind, metadata=metadata)
    return path
