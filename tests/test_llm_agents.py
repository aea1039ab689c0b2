"""docs/llm-agents.md: every program on the page runs and prints what the page says
(the human-approval one across a restart of its mesh, on a SQLite store)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "llm-agents.md"


def _programs() -> list[tuple[str, str, str]]:
    """(section, program, what it prints) for each program of the page."""
    found = []
    for section in PAGE.read_text().split("\n## ")[1:]:
        title = section.splitlines()[0]
        pattern = r"```python\n(.*?)```\n\nIt prints:\n\n```text\n(.*?)```"
        found += [(title, code, printed) for code, printed in re.findall(pattern, section, re.S)]
    return found


PROGRAMS = _programs()


def test_every_section_has_a_program_and_every_program_is_run() -> None:
    sections = [title for title, _, _ in PROGRAMS]
    assert sections == [
        "Planner and workers",
        "Streaming tokens",
        "Timeouts and cancellation",
        "Retries and supervision",
        "Validated tool calls",
        "Human approval, a durable wait",
    ]
    assert PAGE.read_text().count("am.run(main())") == len(PROGRAMS)


@pytest.mark.parametrize(("section", "code", "printed"), PROGRAMS, ids=[p[0] for p in PROGRAMS])
def test_the_program_prints_what_the_page_says(section: str, code: str, printed: str) -> None:
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == printed


def test_an_approval_awaited_in_one_process_is_decided_in_the_next(tmp_path: Path) -> None:
    """The page's `Deployer`, its wait saved by one process and resumed by another."""
    code = next(code for title, code, _ in PROGRAMS if title.startswith("Human approval"))
    classes = code.split("\nasync def main()")[0]
    phase = """
import json
import sys

async def phase(store: str, decision: dict[str, object] | None) -> None:
    async with am.Mesh(state_store=am.SqliteStateStore(store)) as mesh:
        deployer = await mesh.spawn(Deployer, name="deployer")
        print(await deployer.status())
        print(await (deployer.decide(decision) if decision else deployer.run()))

am.run(phase(sys.argv[1], json.loads(sys.argv[2])))
"""
    program = tmp_path / "deployer.py"
    program.write_text(classes + phase)
    store = str(tmp_path / "state.db")

    def run(decision: str) -> list[str]:
        done = subprocess.run(
            [sys.executable, str(program), store, decision],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout.splitlines()

    assert run("null") == [
        "done [], waiting for None",
        "ticket 1: approve 'deploy to production'?",
    ]
    refused = '{"ticket": 1, "approved": false, "by": "bob"}'
    assert run(refused) == [
        "done ['build', 'test'], waiting for (1, 'deploy to production')",
        "bob refused 'deploy to production': the plan stops",
    ]
    assert run("null") == [  # asked again: a new ticket
        "done ['build', 'test'], waiting for None",
        "ticket 2: approve 'deploy to production'?",
    ]
    assert run('{"ticket": 2, "approved": true, "by": "ann"}') == [
        "done ['build', 'test'], waiting for (2, 'deploy to production')",
        "plan complete",
    ]
    assert run("null")[0] == (
        "done ['build', 'test', 'deploy to production', 'announce'], waiting for None"
    )
