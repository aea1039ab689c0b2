"""What a run produced: `StepRecord`, `EpisodeResult`, and writing them as CSV/JSON."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["EpisodeResult", "StepRecord", "write_csv", "write_json"]


@dataclass(frozen=True)
class StepRecord:
    """One step of one episode: who acted, what it earned, who missed the deadline."""

    episode: int
    step: int
    agents: int  # live agents asked for an action
    reward: float  # sum of the step's rewards
    late: int  # agents given the default action because their policy was late
    failed: int  # ... because their policy raised (or is gone)
    seconds: float  # wall time of the step (asks, then env.step)
    metrics: Mapping[str, float] = field(default_factory=dict)  # the env's own


@dataclass(frozen=True)
class EpisodeResult:
    """One episode: per-agent returns and default-action counts, the per-step
    records, and ``digest``, a SHA-256 of the trajectory (every step's actions and
    rewards, by agent id): equal digests mean equal trajectories."""

    episode: int
    seed: int
    steps: int
    seconds: float
    returns: Mapping[str, float]
    late: Mapping[str, int]  # per agent, only agents that were late at least once
    failed: Mapping[str, int]
    errors: Mapping[str, str]  # the first failure of each failed agent
    records: tuple[StepRecord, ...]
    digest: str

    @property
    def total_reward(self) -> float:
        return sum(self.returns.values())

    @property
    def total_late(self) -> int:
        return sum(self.late.values())

    @property
    def total_failed(self) -> int:
        return sum(self.failed.values())

    def summary(self) -> str:
        """One line for humans: steps, reward, defaults, speed, digest prefix."""
        rate = self.steps / self.seconds if self.seconds > 0 else 0.0
        last = self.records[-1].metrics if self.records else {}
        shown = "".join(f"  {k}={v:g}" for k, v in last.items())
        return (
            f"episode {self.episode} (seed {self.seed}): {self.steps} steps, "
            f"{len(self.returns)} agents, reward {self.total_reward:,.2f}, "
            f"late {self.total_late}, failed {self.total_failed}, "
            f"{self.seconds:.2f} s ({rate:,.1f} steps/s){shown}  digest {self.digest[:12]}"
        )


#: The metrics every step records, beside the environment's own.
STEP_METRICS = ("reward", "late", "failed", "defaults", "seconds", "agents")


def metric_names(results: Iterable[EpisodeResult]) -> list[str]:
    """The environment's metric names in these results, in the order first seen."""
    names: dict[str, None] = {}
    for result in results:
        for record in result.records:
            names.update(dict.fromkeys(record.metrics))
    return list(names)


def plotted_metrics(results: Sequence[EpisodeResult]) -> list[str]:
    """What a plot shows by default: reward, the environment's metrics, and defaults."""
    return ["reward", *metric_names(results), "defaults"]


def metric_value(record: StepRecord, name: str) -> float:
    """One metric of one step: one of `STEP_METRICS` (``defaults`` is late + failed)
    or one of the environment's (0.0 where that step did not report it)."""
    if name == "defaults":
        return float(record.late + record.failed)
    if name in STEP_METRICS:
        return float(getattr(record, name))
    return float(record.metrics.get(name, 0.0))


def write_csv(results: Iterable[EpisodeResult], path: str | Path) -> Path:
    """One row per step of every episode: episode, step, agents, reward, late,
    failed, seconds, then one column per environment metric. Returns the path."""
    results = list(results)
    names = metric_names(results)
    path = Path(path)
    with path.open("w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(
            ["episode", "step", "agents", "reward", "late", "failed", "seconds", *names]
        )
        for result in results:
            for r in result.records:
                row = [r.episode, r.step, r.agents, r.reward, r.late, r.failed, r.seconds]
                writer.writerow(row + [r.metrics.get(n, "") for n in names])
    return path


def write_json(results: Iterable[EpisodeResult], path: str | Path) -> Path:
    """Every episode with its summary figures, per-agent counts and per-step records."""
    episodes = [
        {
            "episode": result.episode,
            "seed": result.seed,
            "steps": result.steps,
            "seconds": result.seconds,
            "total_reward": result.total_reward,
            "total_late": result.total_late,
            "total_failed": result.total_failed,
            "digest": result.digest,
            "returns": dict(result.returns),
            "late": dict(result.late),
            "failed": dict(result.failed),
            "errors": dict(result.errors),
            "records": [
                {
                    "step": r.step,
                    "agents": r.agents,
                    "reward": r.reward,
                    "late": r.late,
                    "failed": r.failed,
                    "seconds": r.seconds,
                    "metrics": dict(r.metrics),
                }
                for r in result.records
            ],
        }
        for result in results
    ]
    path = Path(path)
    path.write_text(json.dumps({"episodes": episodes}, indent=1))
    return path
