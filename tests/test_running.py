"""am.run: asyncio.run on uvloop when installed."""

from __future__ import annotations

import asyncio
import importlib.util

import agentmesh as am

from .agents import Counter


def test_run_drives_a_mesh_to_completion_on_uvloop_when_installed() -> None:
    async def main() -> tuple[int, str]:
        async with am.Mesh() as mesh:
            counter = await mesh.spawn(Counter, 41)
            return await counter.add(1), type(asyncio.get_running_loop()).__module__

    value, loop_module = am.run(main())
    assert value == 42
    if importlib.util.find_spec("uvloop") is not None:
        assert loop_module.startswith("uvloop")
