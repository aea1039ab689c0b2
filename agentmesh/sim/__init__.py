"""agentmesh.sim: multi-agent environment simulations on the mesh.

Lockstep: an `Env` shaped like PettingZoo's parallel API, policies that are agents
anywhere in the mesh (``async def act(self, observation)``), and a runner that sends
each step's observations out concurrently, collects actions by a deadline (a late or
failed policy gets the environment's default action, counted), and records rewards
and metrics. Seeds make runs reproducible, on one node or many.

Event-driven: `run_virtual` runs agents (`SimAgent`: ``now``, ``sleep``,
``schedule``) on a virtual clock that jumps to the next timer whenever every agent is
idle, so simulated hours take seconds and a run replays exactly. See
docs/simulation.md.
"""

from .._private.sim.clock import SimAgent, VirtualClockLoop, now, run_virtual, sleep_until
from .._private.sim.cluster import open_local_cluster
from .._private.sim.env import Env, StepResult
from .._private.sim.pettingzoo import PettingZooEnv
from .._private.sim.plot import plot
from .._private.sim.png import plot_png
from .._private.sim.policy import Policy, stream
from .._private.sim.progress import ProgressBar
from .._private.sim.results import EpisodeResult, StepRecord, write_csv, write_json
from .._private.sim.runner import DEFAULT_DEADLINE, run_episode, run_episodes

__all__ = [
    "DEFAULT_DEADLINE",
    "Env",
    "EpisodeResult",
    "PettingZooEnv",
    "Policy",
    "ProgressBar",
    "SimAgent",
    "StepRecord",
    "StepResult",
    "VirtualClockLoop",
    "now",
    "open_local_cluster",
    "plot",
    "plot_png",
    "run_episode",
    "run_episodes",
    "run_virtual",
    "sleep_until",
    "stream",
    "write_csv",
    "write_json",
]
