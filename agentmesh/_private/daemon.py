"""`Daemon`: an ``agentmesh head`` or ``agentmesh node`` run as a child process.

A daemon prints the address it bound as its first line of output (cli.py), so
`Daemon.start` returns once that line is read: the daemon serves, and a worker has
joined its head. `sim.open_local_cluster` starts its workers with it, and the tests
and benchmarks their heads and workers.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

__all__ = ["Daemon"]

#: Seconds a daemon may take to print its address before `Daemon.start` gives up.
START_TIMEOUT = 30.0
#: Seconds a daemon may take to exit after SIGTERM before `Daemon.stop` kills it.
STOP_TIMEOUT = 10.0


class Daemon:
    """One ``python -m agentmesh ...`` process and the address it printed first.

    ``log`` holds its stderr when started with ``stderr=asyncio.subprocess.PIPE`` (read
    as it comes, so the pipe never fills); ``process`` is the `asyncio.subprocess`
    process, for signals (SIGKILL, SIGSTOP) and its exit code.

    Example::

        head = await Daemon.start("head", "--listen", "127.0.0.1:0")
        try:
            async with Mesh(join=head.address) as driver: ...
        finally:
            await head.stop()
    """

    def __init__(
        self,
        process: asyncio.subprocess.Process,
        args: Sequence[str],
        *,
        stderr: int | None = None,
        wrapper: Sequence[str] = (),
        cwd: str | Path | None = None,
    ) -> None:
        self.process = process
        self.args = tuple(args)
        self.stderr = stderr
        self.wrapper = tuple(wrapper)
        self.cwd = cwd
        self.address = ""  # until the daemon prints it
        self.log = bytearray()
        self._reader: asyncio.Future[None] | None = None
        if process.stderr is not None:
            self._reader = asyncio.ensure_future(self._read_stderr(process.stderr))

    async def _read_stderr(self, stderr: asyncio.StreamReader) -> None:
        while chunk := await stderr.read(65536):
            self.log.extend(chunk)

    @classmethod
    async def start(
        cls,
        *args: str,
        stderr: int | None = None,
        wrapper: Sequence[str] = (),
        cwd: str | Path | None = None,
        timeout: float = START_TIMEOUT,
    ) -> Daemon:
        """Start ``agentmesh *args`` with this interpreter and wait for its address.

        ``stderr``: None (the default) shares this process's stderr,
        ``asyncio.subprocess.PIPE`` keeps it in `log`, ``asyncio.subprocess.DEVNULL``
        drops it. ``wrapper`` runs the command through another (``("ip", "netns",
        "exec", "red")``). Raises `RuntimeError` if the process exits before printing
        its address (saying what it wrote on stderr, when kept), `TimeoutError` if it
        has not printed it within ``timeout`` seconds; the process is gone either way.
        """
        process = await asyncio.create_subprocess_exec(
            *wrapper,
            sys.executable,
            "-m",
            "agentmesh",
            *args,
            cwd=cwd,
            stdout=asyncio.subprocess.PIPE,
            stderr=stderr,
        )
        daemon = cls(process, args, stderr=stderr, wrapper=wrapper, cwd=cwd)
        try:
            assert process.stdout is not None
            line = await asyncio.wait_for(process.stdout.readline(), timeout)
        except BaseException:
            await daemon.kill()
            raise
        if not line:
            # It is exiting (its stdout closed): let it finish, so that its own exit
            # code is the one reported, not the SIGKILL of a process still unwinding.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(process.wait(), timeout)
            await daemon.kill()  # (if it has not exited yet) and wait for its stderr
            said = daemon.log.decode(errors="replace").strip()
            raise RuntimeError(
                f"agentmesh {' '.join(args)} exited with {process.returncode} before "
                f"printing its address" + (f": {said}" if said else "")
            )
        daemon.address = line.decode().strip()
        return daemon

    async def stop(self, timeout: float = STOP_TIMEOUT) -> int:
        """SIGTERM (the daemon drains and leaves), SIGKILL after ``timeout`` seconds;
        returns its exit code. Stopping a daemon that has exited returns at once."""
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.process.wait(), timeout)
            except TimeoutError:
                await _kill(self.process)
        await self._logged()
        return self.process.returncode or 0

    async def kill(self) -> None:
        """SIGKILL: the daemon ends at once, leaving nothing behind it (a crash)."""
        await _kill(self.process)
        await self._logged()

    async def restart(self, *args: str, timeout: float = START_TIMEOUT) -> None:
        """Kill the daemon, then start ``agentmesh *args`` (default: its own arguments)
        in its place under this handle, started as it was (its stderr kept in a new
        `log` if it was). A head must be given its address (``--listen``) to come back
        at it."""
        await self.kill()
        new = await Daemon.start(
            *(args or self.args),
            stderr=self.stderr,
            wrapper=self.wrapper,
            cwd=self.cwd,
            timeout=timeout,
        )
        self.process, self.address, self.args = new.process, new.address, new.args
        self.log, self._reader = new.log, new._reader

    async def _logged(self) -> None:
        """Wait until the stderr reader has what the process wrote (it has exited)."""
        if self._reader is None or self._reader.done():
            return
        try:
            await asyncio.wait_for(asyncio.shield(self._reader), STOP_TIMEOUT)
        except TimeoutError:  # something else holds the pipe open: keep what came
            self._reader.cancel()


async def _kill(process: asyncio.subprocess.Process) -> None:
    if process.returncode is None:
        process.kill()
    await process.wait()
