"""A small HTTP/1.1 server on asyncio streams, for the dashboard: GET and HEAD only,
one request per connection, every response complete (``Content-Length``) and never
cached. Standard library only.

A server bound to loopback answers only requests that name a loopback host
(``Host: 127.0.0.1:PORT``, ``localhost``, ``[::1]``), so a web page of another site
cannot read it through a DNS name it points at 127.0.0.1 (DNS rebinding).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ipaddress
import logging
from collections.abc import Awaitable, Callable

__all__ = ["HttpServer", "Response"]

log = logging.getLogger("agentmesh.dashboard")

#: Bytes a request's line and headers may take; seconds a client has to send them.
REQUEST_LIMIT = 16 * 1024
REQUEST_TIMEOUT = 10.0

#: What every response says beside its content: no caching, no sniffing, no framing,
#: and a page that loads nothing from anywhere but this server.
SECURITY_HEADERS = {
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
        "connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; "
        "frame-ancestors 'none'"
    ),
}

_REASONS = {
    200: "OK",
    400: "Bad Request",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


@dataclasses.dataclass(frozen=True, slots=True)
class Response:
    """What the server sends for one request (beside `SECURITY_HEADERS`)."""

    status: int
    content_type: str
    body: bytes
    headers: dict[str, str] = dataclasses.field(default_factory=dict)


#: Answers a GET for a path (its query string removed).
Handler = Callable[[str], Awaitable[Response]]


def _text(status: int, message: str) -> Response:
    return Response(status, "text/plain; charset=utf-8", f"{message}\n".encode())


class HttpServer:
    """Serves ``handler``'s responses on ``host``:``port`` (0: the OS picks) once
    `start` has run; `url` says where."""

    def __init__(self, handler: Handler, host: str, port: int) -> None:
        if not host:
            raise ValueError("the dashboard needs a host to listen on (127.0.0.1: this machine)")
        if not 0 <= port <= 65535:
            raise ValueError(f"a port is 0 to 65535, not {port}")
        self.handler = handler
        # One address: "localhost" would bind two sockets, on two ports for port 0.
        self.host = "127.0.0.1" if host == "localhost" else host
        self.port = port
        self._server: asyncio.Server | None = None
        self._loopback = _is_loopback(host)
        self._clients: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._client, self.host, self.port, limit=REQUEST_LIMIT
        )
        self.port = self._server.sockets[0].getsockname()[1]

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    async def aclose(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        for task in list(self._clients):
            task.cancel()
        await asyncio.gather(*self._clients, return_exceptions=True)
        await server.wait_closed()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._clients.add(task)
        try:
            response, head_only = await self._respond(reader)
            writer.write(_encode(response, head_only))
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the client went away
        finally:
            self._clients.discard(task)
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def _respond(self, reader: asyncio.StreamReader) -> tuple[Response, bool]:
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT):
                raw = await reader.readuntil(b"\r\n\r\n")
        except TimeoutError:
            return _text(400, "request timed out"), False
        except asyncio.LimitOverrunError:
            return _text(431, "request headers too large"), False
        try:
            line, *header_lines = raw.decode("latin-1").split("\r\n")
            method, target, version = line.split(" ")
        except ValueError:
            return _text(400, "malformed request line"), False
        if not version.startswith("HTTP/1."):
            return _text(400, "HTTP/1.x only"), False
        headers = {}
        for header in filter(None, header_lines):
            name, sep, value = header.partition(":")
            if not sep:
                return _text(400, "malformed header"), False
            headers[name.strip().lower()] = value.strip()
        if self._loopback and not _loopback_host(headers.get("host", "")):
            return _text(403, "this dashboard answers requests for a loopback host only"), False
        if method not in ("GET", "HEAD"):
            refused = dataclasses.replace(
                _text(405, "GET or HEAD only"), headers={"Allow": "GET, HEAD"}
            )
            return refused, False
        path = target.split("?", 1)[0]
        try:
            response = await self.handler(path)
        except Exception:
            log.exception("the dashboard failed to answer %s", path)
            response = _text(500, "internal error (see the dashboard's log)")
        return response, method == "HEAD"


def _encode(response: Response, head_only: bool) -> bytes:
    reason = _REASONS.get(response.status, "")
    lines = [
        f"HTTP/1.1 {response.status} {reason}",
        f"Content-Type: {response.content_type}",
        f"Content-Length: {len(response.body)}",
        "Connection: close",
        *(f"{k}: {v}" for k, v in SECURITY_HEADERS.items()),
        *(f"{k}: {v}" for k, v in response.headers.items()),
    ]
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return head if head_only else head + response.body


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _loopback_host(value: str) -> bool:
    """Whether a ``Host`` header names a loopback host (any port)."""
    host = value.strip().lower()
    if host.startswith("["):
        host = host[1 : host.find("]")] if "]" in host else host
    else:
        host = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    return _is_loopback(host)
