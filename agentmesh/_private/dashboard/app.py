"""`Dashboard`: the web page of a cluster (nodes, agents and their message rates,
supervision trees, recent failures, traces) and the JSON it polls, served over HTTP
from the event loop of a `Mesh` that belongs to the cluster."""

from __future__ import annotations

import asyncio
import json
import time
from importlib import resources
from types import TracebackType
from typing import Any

from ..kernel.errors import AgentmeshError
from ..mesh import Mesh
from .http import HttpServer, Response
from .snapshot import Collector

__all__ = ["DEFAULT_PORT", "SNAPSHOT_PATH", "Dashboard"]

#: The port of ``agentmesh dashboard`` unless ``--port`` says otherwise.
DEFAULT_PORT = 7480
#: Where the JSON is served.
SNAPSHOT_PATH = "/api/snapshot"

_JSON = "application/json"


class Dashboard:
    """Serves the dashboard of the cluster ``mesh`` belongs to (of ``mesh`` alone if it
    is embedded) at `url`: the page at ``/`` and its data at ``/api/snapshot``.

    ``host`` is where it listens (default loopback: the page shows agents' names and
    errors, and has no authentication), ``port`` 0 lets the OS pick. The page polls
    every ``interval`` seconds; a snapshot asked for within half of that after the
    previous one is that one again (many viewers cost the cluster one). ``timeout``
    and ``agents_limit`` are the `Collector`'s. Use it as an async context manager,
    inside the mesh's.

    Example::

        async with am.Mesh() as mesh, Dashboard(mesh, port=8000) as dashboard:
            print(dashboard.url)  # http://127.0.0.1:8000/
            await mesh.wait_drain_request()
    """

    def __init__(
        self,
        mesh: Mesh,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        interval: float = 1.0,
        timeout: float = 2.0,
        agents_limit: int = 1000,
    ) -> None:
        if not interval > 0:
            raise ValueError(f"interval must be positive seconds, got {interval}")
        if not timeout > 0:
            raise ValueError(f"timeout must be positive seconds, got {timeout}")
        self.mesh = mesh
        self.interval = interval
        self.collector = Collector(mesh, timeout=timeout, agents_limit=agents_limit)
        self._server = HttpServer(self._answer, host, port)
        self._page: bytes | None = None
        self._latest: tuple[float, dict[str, Any], bytes] | None = None
        self._pending: asyncio.Future[tuple[float, dict[str, Any], bytes]] | None = None

    async def start(self) -> None:
        """Listen; `url` is known from then on. Raises `OSError` if the port is taken."""
        self._page = _page()
        await self._server.start()

    async def aclose(self) -> None:
        """Stop listening (and drop the connections being served)."""
        await self._server.aclose()
        if self._pending is not None:
            self._pending.cancel()

    async def __aenter__(self) -> Dashboard:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    @property
    def url(self) -> str:
        """The page's address, ``http://HOST:PORT/``."""
        return self._server.url

    async def snapshot(self) -> dict[str, Any]:
        """What ``/api/snapshot`` serves: the cluster now (docs/observability.md)."""
        return (await self._fresh())[1]

    async def _fresh(self) -> tuple[float, dict[str, Any], bytes]:
        """The latest snapshot (and its JSON) if taken within half an interval, else a
        new one; callers at the same time share one."""
        latest = self._latest
        if latest is not None and time.monotonic() - latest[0] < self.interval / 2:
            return latest
        if self._pending is None:
            self._pending = asyncio.ensure_future(self._take())
            self._pending.add_done_callback(self._taken)
        return await asyncio.shield(self._pending)

    async def _take(self) -> tuple[float, dict[str, Any], bytes]:
        view = await self.collector.snapshot()
        view["interval"] = self.interval
        body = json.dumps(view, separators=(",", ":"), allow_nan=False).encode()
        self._latest = (time.monotonic(), view, body)
        return self._latest

    def _taken(self, pending: asyncio.Future[Any]) -> None:
        self._pending = None
        if not pending.cancelled():
            pending.exception()  # retrieved: its waiters had it raised

    async def _answer(self, path: str) -> Response:
        if path in ("/", "/index.html"):
            assert self._page is not None
            return Response(200, "text/html; charset=utf-8", self._page)
        if path == SNAPSHOT_PATH:
            try:
                body = (await self._fresh())[2]
            except (AgentmeshError, OSError, TimeoutError) as exc:
                error = {"error": f"{type(exc).__name__}: {exc}", "interval": self.interval}
                return Response(503, _JSON, json.dumps(error).encode())
            return Response(200, _JSON, body)
        return Response(404, "text/plain; charset=utf-8", b"not found\n")


def _page() -> bytes:
    """The page: one static file, shipped in the package."""
    return (resources.files("agentmesh._private.dashboard") / "static" / "index.html").read_bytes()
