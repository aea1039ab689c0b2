"""examples/llm_stream.py end to end: an OpenAI-compatible endpoint (tests/fake_openai.py,
real sockets) streamed through the `Assistant` agent to the test, in every world."""

from __future__ import annotations

import asyncio
import signal
import ssl
import sys
from pathlib import Path
from typing import Any

import pytest

import agentmesh as am
from examples import llm_stream as llm  # importable by a node in another process too

from .conftest import World
from .fake_openai import FakeOpenAI, Reply
from .test_transport_grpc import _make_certificates

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "llm_stream.py"


async def _take(stream: am.Stream[str], into: list[str]) -> None:
    """Take the items of ``stream`` into ``into``, which keeps them if it raises."""
    async for item in stream:
        into.append(item)  # noqa: PERF401 (kept when the stream raises)


def _request(prompt: str = "hi", **fields: Any) -> dict[str, Any]:
    return {"prompt": prompt, **fields}


async def test_tokens_arrive_in_order_through_the_agent(world: World) -> None:
    tokens = ["Str", "eam", "ing", " is", " fun", "."]
    async with FakeOpenAI(Reply(tokens=tokens)) as fake:
        model = llm.OpenAIModel(fake.url, "m1", "sk-test")
        assistant = await world.spawn(llm.Assistant, model)
        got = [t async for t in assistant.answer.stream(_request(max_tokens=9), item_timeout=10)]
        assert got == tokens
        assert [t async for t in assistant.answer.stream(_request("more"))] == fake.default.tokens
    first, second = fake.calls
    assert first.headers["host"] == fake.url.split("/")[2]  # 127.0.0.1:port
    assert first.headers["authorization"] == "Bearer sk-test"
    assert first.headers["accept"] == "text/event-stream"
    assert first.body == {
        "model": "m1",
        "messages": [{"role": "user", "content": "hi"}],
        "temperature": 0.0,
        "max_tokens": 9,
        "stream": True,
    }
    # The conversation goes on: the second call carries the first answer.
    assert second.body["messages"] == [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "Streaming is fun."},
        {"role": "user", "content": "more"},
    ]
    assert await assistant.report() == {"answers": 2, "unfinished": 0, "retries": 0, "messages": 4}


async def test_a_body_not_chunked_is_read_to_the_end_of_the_connection() -> None:
    script = [
        Reply(tokens=["a", "b"], chunked=False),
        Reply(tokens=["c"], chunked=False, drop=True),
    ]
    async with FakeOpenAI(*script) as fake, am.Mesh() as mesh:
        assistant = await mesh.spawn(llm.Assistant, llm.OpenAIModel(fake.url, "m", None), 1)
        assert [t async for t in assistant.answer.stream(_request())] == ["a", "b"]
        with pytest.raises(am.RemoteError, match=r"ModelUnavailable.*ended before \[DONE\]"):
            [t async for t in assistant.answer.stream(_request())]


async def test_leaving_the_loop_early_closes_the_response(world: World) -> None:
    async with FakeOpenAI(Reply(tokens=["a", "b"], endless=True)) as fake:
        assistant = await world.spawn(llm.Assistant, llm.OpenAIModel(fake.url, "m", None))
        got = []
        async with assistant.answer.stream(_request(), item_timeout=10) as stream:
            async for token in stream:
                got.append(token)
                if len(got) == 4:
                    break
        assert got == ["a", "b", "t0", "t1"]
        (call,) = fake.calls
        async with asyncio.timeout(10):
            await call.closed.wait()  # the server saw the connection close mid-answer
        assert "authorization" not in call.headers
        assert await assistant.report() == {
            "answers": 0,
            "unfinished": 1,
            "retries": 0,
            "messages": 0,
        }


async def test_an_https_endpoint_streams_over_tls(tmp_path: Path) -> None:
    certificates = _make_certificates(tmp_path)  # a CA, and a certificate for 127.0.0.1
    served = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    served.load_cert_chain(certificates.cert_file, certificates.key_file)
    script = [Reply(tokens=["sec", "ure"]), Reply(tokens=["a"], endless=True)]
    async with FakeOpenAI(*script, tls=served) as fake, am.Mesh() as mesh:
        model = llm.OpenAIModel(fake.url, "m", None)
        assert fake.url.startswith("https://")
        model.tls = ssl.create_default_context(cafile=certificates.ca_file)  # trust the test CA
        assistant = await mesh.spawn(llm.Assistant, model)
        assert [t async for t in assistant.answer.stream(_request())] == ["sec", "ure"]
        async with assistant.answer.stream(_request()) as stream:
            assert await anext(stream) == "a"
        async with asyncio.timeout(10):
            await fake.calls[1].closed.wait()


async def test_a_deadline_cancels_the_stream_and_closes_the_response(world: World) -> None:
    async with FakeOpenAI(Reply(tokens=["a"], stall=True)) as fake:
        assistant = await world.spawn(llm.Assistant, llm.OpenAIModel(fake.url, "m", None))
        got: list[str] = []

        async def take_one_then_expire() -> None:
            async with asyncio.timeout(60) as deadline:
                async for token in assistant.answer.stream(_request(), item_timeout=60):
                    got.append(token)
                    deadline.reschedule(asyncio.get_running_loop().time())  # expire now

        with pytest.raises(TimeoutError) as raised:
            await take_one_then_expire()
        assert not isinstance(raised.value, am.AskTimeout)  # the deadline's, not a token's
        assert got == ["a"]
        async with asyncio.timeout(10):
            await fake.calls[0].closed.wait()


async def test_a_stalled_model_times_out_per_token_and_its_response_is_closed() -> None:
    async with FakeOpenAI(Reply(tokens=["a"], stall=True)) as fake, am.Mesh() as mesh:
        assistant = await mesh.spawn(llm.Assistant, llm.OpenAIModel(fake.url, "m", None))
        stream = assistant.answer.stream(_request(), item_timeout=0.2)
        assert await anext(stream) == "a"
        with pytest.raises(am.AskTimeout):
            await anext(stream)
        async with asyncio.timeout(10):
            await fake.calls[0].closed.wait()


async def test_a_call_that_fails_before_its_first_token_is_retried() -> None:
    script = [Reply(status=503), Reply(status=429), Reply(tokens=["ok"])]
    async with FakeOpenAI(*script) as fake, am.Mesh() as mesh:
        model = llm.OpenAIModel(fake.url, "m", None)
        assistant = await mesh.spawn(llm.Assistant, model, 3, 0.001)
        assert [t async for t in assistant.answer.stream(_request())] == ["ok"]
        report = await assistant.report()
    assert len(fake.calls) == 3
    assert (report["answers"], report["retries"]) == (1, 2)


async def test_no_retry_once_tokens_went_out_nor_past_the_attempts() -> None:
    script = [Reply(tokens=["half"], drop=True), Reply(status=500), Reply(status=500)]
    async with FakeOpenAI(*script) as fake, am.Mesh() as mesh:
        model = llm.OpenAIModel(fake.url, "m", None)
        assistant = await mesh.spawn(llm.Assistant, model, 2, 0.001)
        got: list[str] = []
        with pytest.raises(am.RemoteError) as raised:
            await _take(assistant.answer.stream(_request()), got)
        assert got == ["half"]  # not repeated by a retry
        assert raised.value.remote_type.endswith("ModelUnavailable")
        assert "in the middle of the answer" in raised.value.remote_message
        assert len(fake.calls) == 1
        with pytest.raises(am.RemoteError, match="HTTP 500"):
            [t async for t in assistant.answer.stream(_request())]
        assert len(fake.calls) == 3  # two attempts
        assert await assistant.report() == {
            "answers": 0,
            "unfinished": 2,
            "retries": 1,
            "messages": 0,
        }


async def test_a_refused_request_is_not_retried() -> None:
    async with FakeOpenAI(Reply(status=400)) as fake, am.Mesh() as mesh:
        assistant = await mesh.spawn(llm.Assistant, llm.OpenAIModel(fake.url, "m", None))
        with pytest.raises(am.RemoteError) as raised:
            [t async for t in assistant.answer.stream(_request())]
    assert raised.value.remote_type.endswith("ModelError")
    assert raised.value.remote_message.startswith("HTTP 400: {")
    assert len(fake.calls) == 1


async def test_a_bad_request_is_refused_before_the_model_is_called() -> None:
    async with FakeOpenAI() as fake, am.Mesh() as mesh:
        assistant = await mesh.spawn(llm.Assistant, llm.OpenAIModel(fake.url, "m", None))
        with pytest.raises(am.BadArguments, match=r"request\.max_tokens: Input should be"):
            [t async for t in assistant.answer.stream(_request(max_tokens=0))]
        with pytest.raises(am.BadArguments, match=r"request\.prompt: String should have"):
            [t async for t in assistant.answer.stream(_request(""))]
    assert fake.calls == []


def test_the_offline_model_is_deterministic() -> None:
    async def answer(prompt: str, max_tokens: int = 256) -> list[str]:
        request = llm.ChatRequest(prompt=prompt, max_tokens=max_tokens)
        return [t async for t in llm.OfflineModel(delay=0).tokens([], request)]

    one = asyncio.run(answer("why?"))
    assert one == asyncio.run(answer("why?"))
    assert one != asyncio.run(answer("why not?"))
    assert 9 <= len(one) <= 16
    assert one[-1] == "."
    assert asyncio.run(answer("why?", max_tokens=2)) == [*one[:2], "."]


async def test_ctrl_c_stops_the_stream_and_closes_the_response() -> None:
    async with FakeOpenAI(Reply(tokens=["x"], endless=True)) as fake:
        # The example as `python EXAMPLE --base-url URL` runs it, with Python's own
        # Ctrl-C handler: a process started in the background by a shell (nohup, `&`)
        # inherits SIGINT ignored, and Python then leaves it so.
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            "import runpy, signal, sys\n"
            "signal.signal(signal.SIGINT, signal.default_int_handler)\n"
            "sys.argv = sys.argv[1:]\n"
            "runpy.run_path(sys.argv[0], run_name='__main__')",
            str(EXAMPLE),
            "--base-url",
            fake.url,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        err = b""
        try:
            async with asyncio.timeout(60):
                assert process.stdout is not None
                assert (
                    await process.stdout.readuntil(b"x") == b"> why do actors suit LLM agents?\nx"
                )
                process.send_signal(signal.SIGINT)
                await fake.calls[0].closed.wait()
                _, err = await process.communicate()
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
    assert process.returncode == 130, err
    assert err.decode().strip() == "interrupted"
