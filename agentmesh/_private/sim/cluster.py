"""`open_local_cluster`: this process as a head, plus N local node processes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from ..daemon import Daemon
from ..mesh import Mesh

__all__ = ["open_local_cluster"]


@asynccontextmanager
async def open_local_cluster(nodes: int, **options: Any) -> AsyncIterator[Mesh]:
    """A mesh whose head is this process, with ``nodes`` worker processes on loopback.

    Each worker is ``python -m agentmesh node --join <this head>``, started with this
    interpreter (its stderr is this process's); it has joined when its first line (its
    address) is read. Leaving the block stops the mesh (and so the agents it spawned
    on the workers), then every worker process (SIGTERM, then SIGKILL after 10 s).
    ``options`` go to `Mesh`. With ``nodes=0`` it is an embedded mesh.
    """
    if nodes < 0:
        raise ValueError(f"nodes must not be negative, got {nodes}")
    if nodes == 0:
        async with Mesh(**options) as mesh:
            yield mesh
        return
    workers: list[Daemon] = []
    try:
        async with Mesh(listen="127.0.0.1:0", **options) as mesh:
            assert mesh.address is not None
            started = await asyncio.gather(
                *(Daemon.start("node", "--join", mesh.address) for _ in range(nodes)),
                return_exceptions=True,
            )
            workers.extend(w for w in started if isinstance(w, Daemon))
            for failure in started:
                if isinstance(failure, BaseException):
                    raise failure
            yield mesh
    finally:
        await asyncio.gather(*(w.stop() for w in workers))
