"""`open_local_cluster`: this process as a head, plus N local node processes."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from ..mesh import Mesh

__all__ = ["open_local_cluster"]


@asynccontextmanager
async def open_local_cluster(nodes: int, **options: Any) -> AsyncIterator[Mesh]:
    """A mesh whose head is this process, with ``nodes`` worker processes on loopback.

    Each worker is ``python -m agentmesh node --join <this head>``, started with this
    interpreter; it has joined when its first line (its address) is read. Leaving the
    block stops the mesh (and so the agents it spawned on the workers), then every
    worker process (SIGTERM, then SIGKILL after 10 s). ``options`` go to `Mesh`.
    With ``nodes=0`` it is an embedded mesh.
    """
    if nodes < 0:
        raise ValueError(f"nodes must not be negative, got {nodes}")
    if nodes == 0:
        async with Mesh(**options) as mesh:
            yield mesh
        return
    processes: list[asyncio.subprocess.Process] = []
    try:
        async with Mesh(listen="127.0.0.1:0", **options) as mesh:
            assert mesh.address is not None
            processes.extend([await _start_node(mesh.address) for _ in range(nodes)])
            for process in processes:
                assert process.stdout is not None
                line = await asyncio.wait_for(process.stdout.readline(), 30)
                if not line:
                    raise RuntimeError("an agentmesh node process exited before joining")
            yield mesh
    finally:
        await asyncio.gather(*(_stop(p) for p in processes))


async def _start_node(head: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "agentmesh",
        "node",
        "--join",
        head,
        stdout=asyncio.subprocess.PIPE,
    )


async def _stop(process: asyncio.subprocess.Process) -> None:
    if process.returncode is None:
        process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), 10)
        except TimeoutError:
            process.kill()
            await process.wait()
