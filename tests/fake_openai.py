"""A tiny OpenAI-compatible chat endpoint for tests: ``POST /v1/chat/completions`` with
``"stream": true`` answered as server-sent events, over real loopback sockets.

Each request takes the next `Reply` of the server's script (the default one when the
script is empty) and is recorded as a `Call`, which says what the client sent and
whether the client closed the connection before the answer was over.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Call", "FakeOpenAI", "Reply"]


@dataclass
class Reply:
    """How to answer one request.

    ``status`` other than 200 answers with that error. Otherwise the ``tokens`` go out
    one event each, then ``[DONE]``; with ``endless`` more tokens follow (``t0``,
    ``t1`` ...) until the client leaves; with ``stall`` nothing follows the tokens
    (and no ``[DONE]``) until the client leaves; with ``drop`` the connection is
    closed after the tokens, without ``[DONE]``. The body is chunked, as HTTP/1.1
    servers send a stream, unless ``chunked`` is false: then it ends with the
    connection.
    """

    tokens: list[str] = field(default_factory=list)
    status: int = 200
    endless: bool = False
    stall: bool = False
    drop: bool = False
    chunked: bool = True


@dataclass
class Call:
    """One request the server answered."""

    body: dict[str, Any]
    headers: dict[str, str]
    sent: int = 0  # token events written
    finished: bool = False  # the answer was over ([DONE], an error, or dropped)
    chunked: bool = True  # the body's framing
    #: Set when the client closed its end before the answer was over.
    closed: asyncio.Event = field(default_factory=asyncio.Event)


class FakeOpenAI:
    """``async with FakeOpenAI() as fake:`` serves on 127.0.0.1 at a port the OS
    picks, over TLS when given a server context; ``fake.url`` is the base URL
    (``http[s]://127.0.0.1:PORT/v1``)."""

    def __init__(
        self, *script: Reply, default: Reply | None = None, tls: ssl.SSLContext | None = None
    ) -> None:
        self.script = list(script)
        self.default = default or Reply(tokens=["Hello", ",", " world", "!"])
        self.calls: list[Call] = []
        self.called = asyncio.Event()  # set at each request
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.tls = tls
        self.url = ""

    async def __aenter__(self) -> FakeOpenAI:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.tls)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"{'https' if self.tls else 'http'}://127.0.0.1:{port}/v1"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        async with asyncio.timeout(10):  # a hang here is the fake's bug: say so
            for task in list(self._tasks):
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            call = await self._read_request(reader)
            if call is not None:
                await self._answer(call, reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the client went away: Call.closed says so where it matters
        finally:
            self._tasks.discard(task)
            writer.close()

    async def _read_request(self, reader: asyncio.StreamReader) -> Call | None:
        head = await reader.readuntil(b"\r\n\r\n")
        request_line, *lines = head.decode("latin-1").split("\r\n")
        if not request_line.startswith("POST /v1/chat/completions "):
            return None
        headers = {}
        for line in lines:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        body = json.loads(await reader.readexactly(int(headers["content-length"])))
        call = Call(body, headers)
        self.calls.append(call)
        self.called.set()
        return call

    async def _answer(
        self, call: Call, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        reply = self.script.pop(0) if self.script else self.default
        if reply.status != 200:
            error = json.dumps({"error": {"message": "overloaded", "type": "server_error"}})
            writer.write(
                f"HTTP/1.1 {reply.status} Unavailable\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(error)}\r\nConnection: close\r\n\r\n{error}".encode()
            )
            await writer.drain()
            call.finished = True
            return
        watcher = asyncio.create_task(self._watch(call, reader))
        try:
            call.chunked = reply.chunked
            framing = b"Transfer-Encoding: chunked\r\n" if reply.chunked else b""
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n%s"
                b"Connection: close\r\n\r\n" % framing
            )
            # What real endpoints send besides tokens: a comment, a role-only delta.
            await self._chunk(call, writer, b": keep-alive\n\n")
            await self._event(
                call, writer, {"choices": [{"index": 0, "delta": {"role": "assistant"}}]}
            )
            for token in reply.tokens:
                await self._token(call, writer, token)
            if reply.endless:
                n = 0
                while not call.closed.is_set():
                    await self._token(call, writer, f"t{n}")
                    n += 1
                    await asyncio.sleep(0.001)  # a model's pace, not a synchronisation
            elif reply.stall:
                await call.closed.wait()
            elif not reply.drop:
                await self._event(call, writer, {"choices": [], "usage": {"total_tokens": 1}})
                await self._chunk(call, writer, b"data: [DONE]\n\n")
                if reply.chunked:
                    writer.write(b"0\r\n\r\n")
                    await writer.drain()
            call.finished = True
        finally:
            me = asyncio.current_task()
            if call.finished or (me is not None and me.cancelling()):
                watcher.cancel()  # (cancelled: the server is closing, do not wait on it)
            with contextlib.suppress(asyncio.CancelledError):
                await watcher

    async def _token(self, call: Call, writer: asyncio.StreamWriter, token: str) -> None:
        delta = {"choices": [{"index": 0, "delta": {"content": token}, "finish_reason": None}]}
        await self._event(call, writer, delta)
        call.sent += 1

    async def _event(self, call: Call, writer: asyncio.StreamWriter, data: dict[str, Any]) -> None:
        event = f"data: {json.dumps(data)}\n\n".encode()
        half = len(event) // 2  # an event split across chunks, as a proxy may do
        await self._chunk(call, writer, event[:half])
        await self._chunk(call, writer, event[half:])

    @staticmethod
    async def _chunk(call: Call, writer: asyncio.StreamWriter, data: bytes) -> None:
        writer.write(b"%x\r\n%s\r\n" % (len(data), data) if call.chunked else data)
        await writer.drain()

    @staticmethod
    async def _watch(call: Call, reader: asyncio.StreamReader) -> None:
        """Set ``call.closed`` when the client closes its end: end of file, or a reset
        (a socket closed with unread data in it is reset)."""
        with contextlib.suppress(ConnectionError):
            while await reader.read(1024):
                pass
        if not call.finished:
            call.closed.set()
