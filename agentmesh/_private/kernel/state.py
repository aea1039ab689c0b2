"""State stores: where agents' snapshots are kept so they survive restarts.

An agent that defines ``snapshot()`` and ``restore(state)`` (plain or async) gets its
last snapshot back whenever a new instance of it starts: after a restart by its
supervisor, and, with a durable store, when a fresh mesh spawns an agent of the same
name. Snapshots are pickled with cloudpickle.
"""

from __future__ import annotations

import abc

__all__ = ["MemoryStateStore", "StateStore"]


class StateStore(abc.ABC):
    """Keeps one snapshot (bytes) per agent key (the agent's name, or its id)."""

    @abc.abstractmethod
    async def get(self, key: str) -> bytes | None:
        """The last snapshot saved under ``key``, or None."""

    @abc.abstractmethod
    async def put(self, key: str, data: bytes) -> None:
        """Save ``data`` as the snapshot for ``key``, replacing any earlier one."""

    @abc.abstractmethod
    async def delete(self, key: str) -> None:
        """Forget the snapshot for ``key``, if any."""

    async def aclose(self) -> None:  # noqa: B027 (optional: most stores hold nothing)
        """Release what the store holds open."""


class MemoryStateStore(StateStore):
    """Snapshots in a dict: they survive restarts of agents, not of the process.

    The default store of a `Mesh`.
    """

    def __init__(self) -> None:
        self._data: dict[str, bytes] = {}

    async def get(self, key: str) -> bytes | None:
        return self._data.get(key)

    async def put(self, key: str, data: bytes) -> None:
        self._data[key] = data

    async def delete(self, key: str) -> None:
        self._data.pop(key, None)
