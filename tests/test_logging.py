"""Logging is the application's to configure: the library adds only a NullHandler."""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap

import agentmesh as am

#: A program whose agent crashes, which agentmesh logs at ERROR ("crashed in ...").
CRASH = textwrap.dedent(
    """
    import asyncio
    import logging
    import sys

    import agentmesh as am

    class Fragile(am.Agent):
        async def fail(self) -> None:
            raise RuntimeError("boom")

    async def main() -> None:
        async with am.Mesh() as mesh:
            fragile = await mesh.spawn(Fragile)
            await fragile.fail.tell()
            await mesh.wait_terminated(fragile)

    if sys.argv[1:] == ["configured"]:
        logging.basicConfig()
    am.run(main())
    print("done")
    """
)


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, "-c", CRASH, *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "done\n"
    return done


def test_the_package_logger_has_a_null_handler() -> None:
    handlers = logging.getLogger("agentmesh").handlers
    assert any(isinstance(h, logging.NullHandler) for h in handlers), handlers
    assert am.__name__ == "agentmesh"


def test_a_program_that_configures_no_logging_sees_nothing_on_stderr() -> None:
    assert _run().stderr == ""


def test_a_program_that_configures_logging_sees_the_crash() -> None:
    err = _run("configured").stderr
    assert "ERROR:agentmesh.agent:" in err
    assert "RuntimeError: boom" in err
