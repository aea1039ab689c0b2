"""Seeing what agents do, against real daemons: ``agentmesh list agents`` and
``status``, plain errors when the head is away, daemons' log lines, a driver that
hears of its agent's crash on a worker (with the script's file names), and dead
nodes aged out. Ports are chosen by the OS; every process is stopped, also on
failure."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import socket
import sys
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

import agentmesh as am
from agentmesh._private.daemon import Daemon

from .agents import Counter, Gate
from .conftest import ROOT, start_daemon, wait_for

pytestmark = pytest.mark.slow

#: A head's log line in the text format.
TEXT_LINE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (DEBUG|INFO|WARNING|ERROR) \S+: ")


async def _agentmesh(*args: str, timeout: float = 60) -> tuple[int, str, str]:
    """Run ``agentmesh *args``; (exit code, stdout, stderr)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "agentmesh",
        *args,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), timeout)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


@pytest.fixture
async def cluster() -> AsyncIterator[tuple[Daemon, Daemon]]:
    """A head (its log in JSON, at INFO) and a worker; dead after 30 s of silence,
    so a paused worker stays a member."""
    head = await start_daemon(
        *("head", "--listen", "127.0.0.1:0", "--dead-after", "30"),
        *("--log-level", "info", "--log-format", "json"),
    )
    worker = None
    try:
        worker = await start_daemon(
            *("node", "--join", head.address, "--dead-after", "30", "--log-level", "info")
        )
        yield head, worker
    finally:
        if worker is not None:
            if worker.process.returncode is None:
                worker.process.send_signal(signal.SIGCONT)  # (if a test paused it)
            await worker.stop()
        await head.stop()


async def _node_id(mesh: am.Mesh, daemon: Daemon) -> str:
    return next(n.id for n in await mesh.nodes() if n.address == daemon.address)


async def test_list_agents_prints_every_nodes_agents_as_a_table_or_json(
    cluster: tuple[Daemon, Daemon],
) -> None:
    head, worker = cluster
    async with am.Mesh(join=head.address, ask_timeout=10) as driver:
        worker_id, head_id = await _node_id(driver, worker), await _node_id(driver, head)
        counter = await driver.spawn(Counter, name="tally", node=worker_id)
        for _ in range(4):
            await counter.add(1)
        await driver.spawn(Gate, name="gatekeeper", node=head_id)

        code, out, err = await _agentmesh("list", "agents", "--address", head.address)
        assert (code, err) == (0, ""), err
        header, *rows = out.splitlines()
        assert header.split() == [
            *("agent", "class", "node", "state"),
            *("queued", "handled", "restarts"),
        ]
        assert sorted(row.split() for row in rows) == [
            ["gatekeeper", "Gate", head_id, "running", "0", "0", "0"],
            ["tally", "Counter", worker_id, "running", "0", "4", "0"],
        ]

        args = ("list", "agents", "--json", "--address", head.address, "--node", worker_id)
        code, out, err = await _agentmesh(*args)
        assert code == 0, err
        view = json.loads(out)
        [tally] = view["agents"]
        assert (tally["name"], tally["node"], tally["handled"]) == ("tally", worker_id, 4)
        assert tally["supervisor"] == f"sys.root.{driver.node_id}"
        assert view["unreachable"] == {}

        code, out, _ = await _agentmesh(
            "list", "agents", "--class", "Gate", "--address", head.address
        )
        assert code == 0
        assert "gatekeeper" in out
        assert "tally" not in out


async def test_a_node_that_does_not_answer_is_reported_and_the_rest_listed(
    cluster: tuple[Daemon, Daemon],
) -> None:
    head, worker = cluster
    async with am.Mesh(join=head.address, ask_timeout=10) as driver:
        worker_id, head_id = await _node_id(driver, worker), await _node_id(driver, head)
        await driver.spawn(Counter, name="on-head", node=head_id)
        await driver.spawn(Counter, name="on-worker", node=worker_id)
        worker.process.send_signal(signal.SIGSTOP)  # alive to the head, but mute
        try:
            args = ("list", "agents", "--json", "--timeout", "1", "--address", head.address)
            code, out, err = await _agentmesh(*args)
        finally:
            worker.process.send_signal(signal.SIGCONT)
        assert code == 0, err
        view = json.loads(out)
        assert [a["name"] for a in view["agents"]] == ["on-head"]
        assert list(view["unreachable"]) == [worker_id]
        assert "AskTimeout" in view["unreachable"][worker_id]
        assert f"node {worker_id} did not answer" in err


@pytest.mark.parametrize(
    "command",
    [("status",), ("list", "agents"), ("drain", "somenode"), ("stop", "someagent")],
    ids=["status", "list", "drain", "stop"],
)
async def test_client_commands_say_plainly_that_the_head_is_unreachable(
    command: tuple[str, ...],
) -> None:
    with socket.socket() as closed:  # bound, never listening: connections are refused
        closed.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{closed.getsockname()[1]}"
        code, out, err = await _agentmesh(*command, "--address", address)
    name = "list agents" if command[0] == "list" else command[0]
    assert code == 1
    assert out == ""
    assert err.count("\n") == 1, err
    assert err.startswith(f"agentmesh {name}: ")
    assert f"cannot reach the head at {address}" in err
    assert "Traceback" not in err


async def test_daemons_log_lines_parse_as_json_or_read_as_text(
    cluster: tuple[Daemon, Daemon],
) -> None:
    head, worker = cluster
    async with am.Mesh(join=head.address) as driver:
        head_id = await _node_id(driver, head)
    assert await worker.stop() == 0
    assert await head.stop() == 0
    entries = [json.loads(line) for line in head.log.decode().splitlines()]
    assert entries, "the head logged nothing at INFO"
    for entry in entries:
        assert {"time", "level", "logger", "message"} <= set(entry)
        assert entry["node"] == head_id
    assert any(e["message"].startswith(f"node {head_id} (head) joined") for e in entries)
    worker_lines = worker.log.decode().splitlines()
    assert worker_lines, "the worker logged nothing at INFO"
    starts = [line for line in worker_lines if not line.startswith((" ", "Traceback"))]
    assert all(TEXT_LINE.match(line) for line in starts), worker_lines


#: A driver whose agent, a class of its script, crashes on the worker.
DRIVER = textwrap.dedent(
    """
    import asyncio
    import logging
    import sys

    import agentmesh as am

    class Fragile(am.Agent):
        async def fail(self) -> None:
            raise RuntimeError("boom")  # CRASH LINE

        async def refuse(self) -> None:
            raise ValueError("no")  # ASK LINE

    class Forwarded(logging.Handler):
        def __init__(self) -> None:
            super().__init__()
            self.heard = asyncio.Event()

        def emit(self, record: logging.LogRecord) -> None:
            if getattr(record, "agent_node", None) is not None:
                self.heard.set()

    async def main(address: str) -> None:
        logging.basicConfig(level=logging.ERROR)
        forwarded = Forwarded()
        logging.getLogger("agentmesh.agent").addHandler(forwarded)
        async with am.Mesh(join=address) as mesh:
            fragile = await mesh.spawn(Fragile, name="fragile")
            print(fragile.node)
            try:
                await fragile.refuse()
            except am.RemoteError as err:
                print(err.remote_traceback)
            await fragile.fail.tell()
            await asyncio.wait_for(forwarded.heard.wait(), 30)

    am.run(main(sys.argv[1]))
    """
)


async def test_a_driver_logs_its_agents_crash_on_a_worker_with_the_scripts_file_names(
    cluster: tuple[Daemon, Daemon], tmp_path: Path
) -> None:
    head, worker = cluster
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    lines = DRIVER.splitlines()
    crash_line = next(i for i, line in enumerate(lines, 1) if "# CRASH LINE" in line)
    ask_line = next(i for i, line in enumerate(lines, 1) if "# ASK LINE" in line)
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(script),
        head.address,
        cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out_bytes, err_bytes = await asyncio.wait_for(process.communicate(), 60)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    out, err = out_bytes.decode(), err_bytes.decode()
    assert process.returncode == 0, err
    node, *remote_traceback = out.splitlines()
    async with am.Mesh(join=head.address) as mesh:
        assert node == await _node_id(mesh, worker)  # it ran on the worker
    # An ask's traceback, and the crash's, name the script and its lines (not
    # cloudpickle's "<dynamic-code>").
    assert f'File "{script}", line {ask_line}, in refuse' in "\n".join(remote_traceback)
    assert f"ERROR:agentmesh.agent:agent fragile crashed on node {node}: RuntimeError: boom" in err
    assert f'File "{script}", line {crash_line}, in fail' in err
    assert "<dynamic-code>" not in out + err


async def test_status_shows_times_and_a_dead_node_until_it_is_forgotten() -> None:
    fast = ("--heartbeat", "0.2", "--dead-after", "1.5")
    head = await start_daemon("head", "--listen", "127.0.0.1:0", *fast, "--forget-dead-after", "2")
    worker = None
    try:
        worker = await start_daemon("node", "--join", head.address, *fast)
        async with am.Mesh(join=head.address, heartbeat=0.2, dead_after=1.5) as driver:
            worker_id = await _node_id(driver, worker)
            await worker.kill()

            async def listed_down() -> bool:
                nodes = {n.id: n for n in await driver.nodes()}
                return worker_id in nodes and not nodes[worker_id].alive

            async def forgotten() -> bool:
                return worker_id not in {n.id for n in await driver.nodes()}

            await wait_for(listed_down, timeout=15, what="the killed worker listed down")
            code, out, err = await _agentmesh("status", "--address", head.address)
            assert code == 0, err
            [line] = [line for line in out.splitlines() if line.startswith(worker_id)]
            assert re.search(r" down .* \S+s ago ", line), line  # "1.6s ago"
            [head_line] = [line for line in out.splitlines() if " head " in line]
            assert re.search(r" up .* \d\S*s\s+\S+s ago ", head_line), head_line  # uptime, seen
            code, out, _ = await _agentmesh("status", "--json", "--address", head.address)
            nodes = {n["id"]: n for n in json.loads(out)["nodes"]}
            assert nodes[worker_id]["last_seen"] >= 1.5
            assert nodes[worker_id]["uptime"] > 0
            await wait_for(forgotten, timeout=15, what="the dead worker forgotten")
    finally:
        if worker is not None:
            await worker.stop()
        await head.stop()
