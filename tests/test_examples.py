"""Every example runs, as a user would run it, and prints what it promises."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from .fake_openai import FakeOpenAI, Reply

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _run(*args: str) -> str:
    done = subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_quickstart_prints_what_the_readme_says() -> None:
    assert _run(str(EXAMPLES / "quickstart.py")).split() == ["6", "12"]


def test_demo_runs_small_and_conserves_cash() -> None:
    out = _run(str(EXAMPLES / "demo.py"), "--agents", "20", "--rounds", "3", "--seed", "1")
    assert "conservation  ok" in out
    assert "20 traders" in out


def test_supervision_restarts_workers_and_keeps_their_work() -> None:
    out = _run(str(EXAMPLES / "supervision.py"), "--jobs", "9")
    assert "total: 40 (expected 40) ok" in out  # 1 + ... + 9, less the poisoned job 5
    assert "audit: 8 jobs finished ok" in out
    assert "refs unchanged after the restarts: True" in out
    assert "w2 restarted; restored from its checkpoint: jobs=1" in out
    tree = [line.split() for line in out[out.index("tree:") :].splitlines()[1:]]
    rows = {row[0]: row[1:] for row in tree}
    assert rows["team"][:4] == ["Supervisor", "permanent", "running", "restarts=0"]
    assert rows["w1"][:4] == ["Worker", "permanent", "running", "restarts=0"]
    # rest_for_one: w2 crashed on the poisoned job; w3, started after it, restarted too.
    assert rows["w2"][:4] == ["Worker", "permanent", "running", "restarts=1"]
    assert " ".join(rows["w2"][4:]) == "last error: ValueError: job 5 is poisoned"
    assert rows["w3"][:4] == ["Worker", "permanent", "running", "restarts=1"]


def test_rolling_update_hands_the_agent_over() -> None:
    out = _run(str(EXAMPLES / "rolling_update.py"))
    assert out.splitlines() == [
        "on the first worker: True 11",
        "the first worker exited with 0",
        "on the second worker: True 11",
        "state: running restarts: 1",
        "the old ref: AgentUnavailable",
    ]


def test_pubsub_types_ticks_and_dead_letters_the_bad_one() -> None:
    out = _run(str(EXAMPLES / "pubsub.py"), "--steps", "10")
    assert "trader: 29 ticks, each venue in order: True" in out  # lse's step 7 is invalid
    assert "tape: 30 messages on 3 topics, by type: {'Tick': 29, 'str': 1}" in out
    assert "dead letters: 1" in out
    assert "market.lse.ticks from lse to trader: payload failed validation as" in out
    assert "bus: published=30 deliveries=60 dead_letters=1 subscriptions=3" in out
    rows = {line.split()[0]: line.split()[1] for line in out.splitlines()[1:4]}
    assert rows == {"nyse": "10", "lse": "9", "tse": "10"}


def test_predator_prey_runs_small_and_writes_its_results(tmp_path: Path) -> None:
    args = ["--agents", "60", "--steps", "10", "--seed", "3", "--out", str(tmp_path)]
    out = _run(str(EXAMPLES / "predator_prey.py"), *args)
    assert "predator-prey: 60 agents on a 15x15 grid, the embedded mesh" in out
    assert "steps        10 in" in out
    assert "defaults     late 0, failed 0" in out
    assert (tmp_path / "predator_prey.png").read_bytes()[:4] == b"\x89PNG"
    svg = (tmp_path / "predator_prey.svg").read_text()  # matplotlib: in the dev lock
    assert "Predator-prey: 60 agents on a 15x15 grid, seed 3</text>" in svg
    assert len((tmp_path / "predator_prey.csv").read_text().splitlines()) == 11
    again = _run(str(EXAMPLES / "predator_prey.py"), *args)
    assert _digest(out) == _digest(again)


def test_predator_prey_runs_without_the_optional_extras(tmp_path: Path) -> None:
    """`make demo` installs the runtime alone: no matplotlib, no tqdm."""
    example = EXAMPLES / "predator_prey.py"
    args = ["--agents", "60", "--steps", "5", "--seed", "3", "--out", str(tmp_path)]
    bare = (
        "import runpy, sys\n"
        "sys.modules.update(matplotlib=None, tqdm=None)  # as if not installed\n"
        f"sys.argv = [{str(example)!r}, *{args!r}]\n"
        f"runpy.run_path({str(example)!r}, run_name='__main__')\n"
    )
    out = _run("-c", bare)
    assert "plot " + str(tmp_path / "predator_prey.png") + " (built in;" in out
    assert (tmp_path / "predator_prey.png").read_bytes()[:4] == b"\x89PNG"
    assert not (tmp_path / "predator_prey.svg").exists()


def test_market_runs_on_simulated_time_and_replays() -> None:
    out = _run(str(EXAMPLES / "market.py"), "--traders", "10", "--seconds", "120", "--seed", "3")
    assert "market: 10 traders, 120 simulated seconds (seed 3)" in out
    assert "clock        121.0 simulated s in" in out
    assert "replay       identical" in out


def test_llm_team_runs_offline_deterministically() -> None:
    args = ["--task", "plan a bake sale", "--good", "10", "--rounds", "3"]
    out = _run(str(EXAMPLES / "llm_team.py"), *args)
    assert [line.split(":")[0] for line in out.splitlines()[:3]] == [
        "round 1",
        "round 2",
        "round 3",
    ]
    assert "done after 3 round(s)" in out
    assert out == _run(str(EXAMPLES / "llm_team.py"), *args)


def test_llm_team_talks_to_an_openai_compatible_endpoint() -> None:
    seen: list[dict[str, object]] = []

    class Chat(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            seen.append(body)
            system = body["messages"][0]["content"]
            content = "score: 9" if system.startswith("critic") else "part one\npart two"
            reply = json.dumps({"choices": [{"message": {"content": content}}]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Chat)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/v1"
        out = _run(str(EXAMPLES / "llm_team.py"), "--base-url", url, "--model", "m1")
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
    assert "round 1: 2 parts, score 9" in out
    assert len(seen) == 1 + 2 + 1  # plan, two drafts, a score
    assert {body["model"] for body in seen} == {"m1"}


def test_llm_stream_streams_offline_deterministically() -> None:
    args = [str(EXAMPLES / "llm_stream.py"), "why actors?", "and streams?", "--delay", "0"]
    out = _run(*args)
    lines = out.splitlines()
    assert lines[0] == "> why actors?"
    assert lines[1].endswith(".")
    assert lines[2] == f"[{len(lines[1].split()) + 1} tokens]"  # "." is a token
    assert lines[3] == "> and streams?"
    assert lines[6] == "answers: 2, unfinished: 0, retries: 0, messages: 4"
    assert out == _run(*args)


def test_llm_stream_retries_a_failed_call_and_stops_early() -> None:
    args = ["--fail-first", "2", "--stop-after", "3", "--delay", "0"]
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / "llm_stream.py"), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr.splitlines() == [
        "model call failed (the model's connection was reset); retry 1 in 0.05s",
        "model call failed (the model's connection was reset); retry 2 in 0.1s",
    ]
    lines = done.stdout.splitlines()
    assert len(lines[1].split()) == 3
    assert lines[2] == "[3 tokens] stopped early"
    assert lines[3] == "answers: 0, unfinished: 1, retries: 2, messages: 0"


def test_llm_stream_refuses_a_bad_request() -> None:
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / "llm_stream.py"), "--temperature", "5"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 2
    assert "request.temperature: Input should be less than or equal to 2" in done.stderr


async def test_llm_stream_streams_from_an_openai_compatible_endpoint() -> None:
    tokens = ["Act", "ors", " stream", " well", "."]
    async with FakeOpenAI(Reply(status=503), Reply(tokens=tokens)) as fake:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            str(EXAMPLES / "llm_stream.py"),
            "say it",
            "--base-url",
            fake.url,
            "--model",
            "m1",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "OPENAI_API_KEY": "sk-example"},
        )
        try:
            out, err = await asyncio.wait_for(process.communicate(), 120)
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
    assert process.returncode == 0, err
    assert out.decode().splitlines() == [
        "> say it",
        "Actors stream well.",
        "[5 tokens]",
        "answers: 1, unfinished: 0, retries: 1, messages: 2",
    ]
    assert "HTTP 503" in err.decode()
    assert [call.body["model"] for call in fake.calls] == ["m1", "m1"]
    assert fake.calls[1].headers["authorization"] == "Bearer sk-example"


def _digest(out: str) -> str:
    return next(line.split()[1] for line in out.splitlines() if "digest" in line)


def test_every_example_is_covered() -> None:
    assert {p.name for p in EXAMPLES.glob("*.py")} == {
        "quickstart.py",
        "demo.py",
        "supervision.py",
        "pubsub.py",
        "placement.py",
        "predator_prey.py",
        "market.py",
        "llm_team.py",
        "llm_stream.py",
        "rolling_update.py",
        "turns.py",
    }


def test_the_readme_layout_lists_every_example() -> None:
    readme = (EXAMPLES.parent / "README.md").read_text()
    layout = readme[readme.index("## Layout") :]
    layout = layout[: layout.index("\n## ", 1)]
    listed = {line.split()[0] for line in layout.splitlines() if line.startswith("  ")}
    missing = {p.name for p in EXAMPLES.glob("*.py")} - listed
    assert not missing, f"README's layout does not list {sorted(missing)}"


def test_placement_places_by_resources_labels_strategies_and_gangs() -> None:
    out = _run(str(EXAMPLES / "placement.py")).splitlines()
    assert out[0] == "planner on eu-gpu"
    assert out[1] == "search tool on eu-gpu | browser tool on us-cpu"
    assert out[2] == "PlacementError: no node can ever host resources gpu=2:"
    assert out[3:5] == [
        "   node eu-gpu (worker): gpu 1 in all of 2",
        "   node head (head), us-cpu (worker): gpu 0 in all of 2",
    ]
    assert out[5] == "second planner waiting: True | spawns queued at the head: 1"
    assert out[6] == "second planner on eu-gpu after the first stopped"
    assert out[7] == "reviewers on ['eu-gpu', 'head', 'us-cpu']"
    assert out[8] == "reviewer0 did 'ship it: step 1'"
    assert out[9] == (
        "reserved: {'eu-gpu': {'gpu': 1.0, 'cpu': 1.0}, 'head': {'cpu': 1.0}, "
        "'us-cpu': {'cpu': 1.0}}"
    )


def test_turns_wait_alone_keep_their_context_and_take_turns_fairly() -> None:
    out = _run(str(EXAMPLES / "turns.py")).splitlines()
    assert out[0] == "alice: gave up after 0.2s"
    assert out[1] == "bob is bob and alice is nobody"
    seen = int(out[2].split("had handled ")[1].split()[0])
    assert 0 <= seen <= 32  # one slice of alice's, at most, before bob's turn
    assert out[3] == "alice handled 10000 in all"
