"""Streaming an LLM's tokens through an agent to the driver, as they come.

An `Assistant` agent holds a conversation and a model client. Its `answer` method
yields (a streaming method), so the driver prints each token as it arrives:

    async for token in assistant.answer.stream(request): print(token, end="")

- The request is a pydantic model, `ChatRequest`: a dict sent by the driver is
  validated on the agent's node, and a bad one is refused with `BadArguments` naming
  the field (try ``--temperature 5``).
- Timeouts suited to a model: a generous wait for each token (``--item-timeout``,
  60 s: a long prompt may take that long to its first token) and a deadline for the
  whole run (``--deadline``, `asyncio.timeout`), which cancels what is under way.
- Cancellation: Ctrl-C, the deadline, or the driver leaving its loop early
  (``--stop-after N`` tokens) closes the stream; the agent's generator is closed, and
  with it the HTTP response, so the server stops generating.
- Retries: the agent retries a model call that failed before its first token
  (connection errors, HTTP 429 and 5xx), a few times with a growing delay; once tokens
  have gone out it does not (the caller would see them twice), the error goes to the
  caller instead. Supervision restarts a crashed agent, it does not retry calls: the
  agent is ``restart="permanent"``, and checkpoints its conversation after each
  answer, so a new instance carries on from it (see docs/llm-agents.md).

The model is pluggable: `OfflineModel` (the default) yields a deterministic answer,
one token at a time, computed from the prompt, with no network; ``--base-url`` streams
from any OpenAI-compatible endpoint (``/chat/completions`` with ``"stream": true``,
read as server-sent events as they arrive, on the event loop, standard library only;
the key from ``$OPENAI_API_KEY``). ``--fail-first N`` makes the first N model calls
fail, to show the retries.

    python examples/llm_stream.py "why do actors suit LLM agents?" "and streams?"
    python examples/llm_stream.py --base-url https://api.openai.com/v1 --model gpt-4o-mini
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import logging
import os
import ssl
import sys
import urllib.parse
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any, Protocol

from pydantic import BaseModel, Field

import agentmesh as am

log = logging.getLogger("llm_stream")

Message = dict[str, str]  # {"role": "user", "content": "..."}


class ChatRequest(BaseModel):
    """One question to the assistant, validated before `Assistant.answer` runs."""

    prompt: str = Field(min_length=1)
    temperature: float = Field(default=0.0, ge=0.0, le=2.0)
    max_tokens: int = Field(default=256, ge=1, le=4096)


class ModelUnavailable(ConnectionError):
    """The model could not answer now (HTTP 429 or 5xx, the connection dropped): worth
    another try."""


class ModelError(RuntimeError):
    """The model refused the request (HTTP 4xx, an error event): another try would fail
    the same way."""


class Model(Protocol):
    """A chat model that streams its answer, one piece of text (a token) at a time."""

    def tokens(
        self, messages: list[Message], request: ChatRequest
    ) -> AsyncGenerator[str, None]: ...


class OfflineModel:
    """A deterministic stand-in: the same prompt always streams the same tokens."""

    WORDS = (
        *("agents", "stream", "tokens", "actors", "keep", "state", "turns", "mailboxes"),
        *("supervise", "restart", "cancel", "calls", "while", "models", "think", "slowly"),
    )

    def __init__(self, delay: float = 0.02) -> None:
        self.delay = delay  # between tokens, so it looks like a model at work

    async def tokens(
        self, messages: list[Message], request: ChatRequest
    ) -> AsyncGenerator[str, None]:
        digest = hashlib.sha256(request.prompt.encode()).digest()
        count = min(request.max_tokens, 8 + digest[0] % 8)
        for i in range(count):
            await asyncio.sleep(self.delay)
            word = self.WORDS[digest[i + 1] % len(self.WORDS)]
            yield word.capitalize() if i == 0 else " " + word
        await asyncio.sleep(self.delay)
        yield "."


class Flaky:
    """Wraps a model so its first ``failures`` calls fail before their first token."""

    def __init__(self, model: Model, failures: int) -> None:
        self.model = model
        self.failures = failures

    async def tokens(
        self, messages: list[Message], request: ChatRequest
    ) -> AsyncGenerator[str, None]:
        if self.failures > 0:
            self.failures -= 1
            raise ConnectionResetError("the model's connection was reset")
        async with contextlib.aclosing(self.model.tokens(messages, request)) as tokens:
            async for token in tokens:
                yield token


class OpenAIModel:
    """Any OpenAI-compatible chat endpoint, streamed: ``POST /chat/completions`` with
    ``"stream": true``, the answer read as server-sent events (``data: {...}`` lines,
    then ``data: [DONE]``) as they arrive, over asyncio streams (TLS for https)."""

    def __init__(self, base_url: str, model: str, api_key: str | None) -> None:
        url = urllib.parse.urlsplit(base_url)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError(f"--base-url must be an http(s) URL, not {base_url!r}")
        self.host = url.hostname
        self.port = url.port or (443 if url.scheme == "https" else 80)
        self.authority = url.netloc.rpartition("@")[2]  # the Host header: as in the URL
        self.path = url.path.rstrip("/") + "/chat/completions"
        self.tls = ssl.create_default_context() if url.scheme == "https" else None
        self.model = model
        self.api_key = api_key

    async def tokens(
        self, messages: list[Message], request: ChatRequest
    ) -> AsyncGenerator[str, None]:
        body = json.dumps(
            {
                "model": self.model,
                "messages": messages,
                "temperature": request.temperature,
                "max_tokens": request.max_tokens,
                "stream": True,
            }
        ).encode()
        head = [
            f"POST {self.path} HTTP/1.1",
            f"Host: {self.authority}",
            "Content-Type: application/json",
            "Accept: text/event-stream",
            f"Content-Length: {len(body)}",
            "Connection: close",
        ]
        if self.api_key:
            head.append(f"Authorization: Bearer {self.api_key}")
        reader, writer = await asyncio.open_connection(
            self.host, self.port, ssl=self.tls, limit=1 << 20
        )
        try:
            writer.write("\r\n".join([*head, "", ""]).encode() + body)
            await writer.drain()
            status, headers = await _read_head(reader)
            lines = _body_lines(reader, headers)
            if status != 200:
                detail = b"".join([line async for line in lines])[:500].decode(errors="replace")
                error = ModelUnavailable if status == 429 or status >= 500 else ModelError
                raise error(f"HTTP {status}: {detail.strip()}")
            async for data in _sse_data(lines):
                if data == "[DONE]":
                    return
                chunk = json.loads(data)
                if "error" in chunk:
                    raise ModelError(f"the model stopped: {chunk['error']}")
                for choice in chunk.get("choices") or ():
                    text = (choice.get("delta") or {}).get("content")
                    if text:
                        yield text
            raise ModelUnavailable("the response ended before [DONE]")
        finally:
            # Reached when the answer is over, and when the consumer left early: the
            # generator is closed, or cancelled where it waits for the next line.
            # Closing the connection tells the server to stop generating.
            writer.close()


async def _read_head(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    """An HTTP response's status code and headers (names in lower case)."""
    try:
        status_line = await reader.readuntil(b"\r\n")
        headers: dict[str, str] = {}
        while (line := await reader.readuntil(b"\r\n")) != b"\r\n":
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
    except asyncio.IncompleteReadError as exc:
        raise ModelUnavailable("the connection closed before a response") from exc
    parts = status_line.split()
    if len(parts) < 2 or not parts[1].isdigit():
        raise ModelError(f"not an HTTP response: {status_line[:80]!r}")
    return int(parts[1]), headers


async def _body_lines(
    reader: asyncio.StreamReader, headers: dict[str, str]
) -> AsyncIterator[bytes]:
    """The response body's lines as they arrive: chunked, of a given length, or up to
    the end of the connection."""
    if "chunked" not in headers.get("transfer-encoding", "").lower():
        if "content-length" in headers:  # an error's body, say
            try:
                body = await reader.readexactly(int(headers["content-length"]))
            except asyncio.IncompleteReadError as exc:
                body = exc.partial
            for line in body.splitlines(keepends=True):
                yield line
            return
        while line := await reader.readline():
            yield line
        return
    pending = b""
    while True:
        try:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            chunk = await reader.readexactly(size + 2) if size else b""
        except asyncio.IncompleteReadError as exc:
            raise ModelUnavailable("the connection closed in the middle of the answer") from exc
        if not chunk:
            break
        *complete, pending = (pending + chunk[:-2]).split(b"\n")  # less the chunk's CRLF
        for line in complete:
            yield line + b"\n"
    if pending:
        yield pending


async def _sse_data(lines: AsyncIterator[bytes]) -> AsyncIterator[str]:
    """The data of each server-sent event (its ``data:`` lines, joined)."""
    data: list[str] = []
    async for raw in lines:
        line = raw.decode().rstrip("\r\n")
        if not line:  # a blank line ends an event
            if data:
                yield "\n".join(data)
                data = []
        elif line.startswith("data:"):
            data.append(line[5:].removeprefix(" "))
        # Comments (":..."), "event:", "id:" and "retry:" lines carry nothing we need.
    if data:
        yield "\n".join(data)


class Assistant(am.Agent):
    """A conversation with a model; each answer streamed to the caller token by token."""

    def __init__(self, model: Model, attempts: int = 3, backoff: float = 0.05) -> None:
        self.model = model
        self.attempts = attempts
        self.backoff = backoff
        self.history: list[Message] = []
        self.stats = {"answers": 0, "unfinished": 0, "retries": 0}

    def snapshot(self) -> list[Message]:
        return self.history

    def restore(self, state: list[Message]) -> None:
        self.history = state

    async def answer(self, request: ChatRequest) -> AsyncIterator[str]:
        """Stream the model's answer to ``request``; retry a call that fails before
        its first token."""
        messages = [*self.history, {"role": "user", "content": request.prompt}]
        text: list[str] = []
        finished = False
        try:
            for attempt in range(1, self.attempts + 1):
                try:
                    async with contextlib.aclosing(self.model.tokens(messages, request)) as tokens:
                        async for token in tokens:
                            text.append(token)
                            yield token
                    break
                except ConnectionError as exc:
                    if text or attempt == self.attempts:
                        raise  # tokens went out already, or no tries left
                    delay = self.backoff * 2 ** (attempt - 1)
                    log.warning("model call failed (%s); retry %d in %gs", exc, attempt, delay)
                    self.stats["retries"] += 1
                    await asyncio.sleep(delay)
            finished = True
        finally:
            if not finished:
                self.stats["unfinished"] += 1
        self.history = [*messages, {"role": "assistant", "content": "".join(text)}]
        self.stats["answers"] += 1
        await self.checkpoint()  # a restarted assistant carries on from here

    async def report(self) -> dict[str, int]:
        return {**self.stats, "messages": len(self.history)}


async def main(args: argparse.Namespace) -> int:
    logging.basicConfig(format="%(message)s", stream=sys.stderr)
    if args.base_url:
        model: Model = OpenAIModel(args.base_url, args.model, os.environ.get("OPENAI_API_KEY"))
    else:
        model = OfflineModel(args.delay)
    if args.fail_first:
        model = Flaky(model, args.fail_first)
    async with am.Mesh() as mesh:
        assistant = await mesh.spawn(Assistant, model, name="assistant", restart="permanent")
        try:
            async with asyncio.timeout(args.deadline):
                for prompt in args.prompts:
                    await converse(assistant, prompt, args)
        except am.BadArguments as exc:
            print(f"\nrefused: {exc}", file=sys.stderr)
            return 2
        except am.AskTimeout:  # before TimeoutError: it is one
            print(f"\nno token for {args.item_timeout:g}s: gave up", file=sys.stderr)
            return 1
        except TimeoutError:
            print(f"\nthe {args.deadline:g}s deadline passed: gave up", file=sys.stderr)
            return 1
        except am.RemoteError as exc:
            print(f"\nthe model failed: {exc.remote_type}: {exc.remote_message}", file=sys.stderr)
            return 1
        report = await assistant.report()
    print(", ".join(f"{key}: {value}" for key, value in report.items()))
    return 0


async def converse(assistant: am.AgentRef, prompt: str, args: argparse.Namespace) -> None:
    """Ask one question; print the answer's tokens as they arrive."""
    request: dict[str, Any] = {
        "prompt": prompt,
        "temperature": args.temperature,
        "max_tokens": args.max_tokens,
    }  # a dict: the agent's node validates it into a ChatRequest
    print(f"> {prompt}")
    count = 0
    async with assistant.answer.stream(request, item_timeout=args.item_timeout) as tokens:
        async for token in tokens:
            print(token, end="", flush=True)
            count += 1
            if count == args.stop_after:
                break  # leaving the block closes the stream: the model call stops
    print(f"\n[{count} tokens]" + (" stopped early" if count == args.stop_after else ""))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("prompts", nargs="*", default=["why do actors suit LLM agents?"])
    parser.add_argument("--base-url", help="an OpenAI-compatible endpoint (default: offline)")
    parser.add_argument("--model", default="gpt-4o-mini", help="model name for --base-url")
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--item-timeout", type=float, default=60.0, help="per token (60 s)")
    parser.add_argument("--deadline", type=float, default=600.0, help="for the run (600 s)")
    parser.add_argument("--stop-after", type=int, default=0, help="leave after N tokens")
    parser.add_argument("--fail-first", type=int, default=0, help="fail N model calls")
    parser.add_argument("--delay", type=float, default=0.02, help="offline model, per token")
    return parser.parse_args()


if __name__ == "__main__":
    try:
        sys.exit(am.run(main(parse_args())))
    except KeyboardInterrupt:  # Ctrl-C cancelled main(): the stream and the call closed
        print("\ninterrupted", file=sys.stderr)
        sys.exit(130)
