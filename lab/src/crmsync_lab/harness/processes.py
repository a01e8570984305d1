"""Child processes of the harness: started with their output in a log file,
stopped with SIGTERM and, after a grace period, SIGKILL of their whole group.

Each child gets its own session (process group), so a Ctrl-C in the terminal
reaches only the harness, which then stops the children in order; and a
SIGKILL of the group also takes the worker processes a child spawned.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

# How a child runs the crmsync CLI of this very interpreter (no PATH lookup).
CLI = (sys.executable, "-c", "from crmsync.cli import main; main()")


def crmsync_argv(*args: str) -> list[str]:
    return [*CLI, *args]


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on right now (the child binds it a moment later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class Proc:
    """One child process whose stdout and stderr go to ``<log_dir>/<name>.log``."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        env: Mapping[str, str],
        log_dir: Path,
        *,
        nice: int = 0,
    ):
        self.name = name
        self.nice = nice
        self.argv = list(argv)
        self.env = dict(env)
        self.log_path = log_dir / f"{name}.log"
        self.process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        # Owner-only: a process log may hold what a user would not show others.
        fd = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        os.fchmod(fd, 0o600)  # also when it existed already
        with os.fdopen(fd, "ab") as log:
            self.process = await asyncio.create_subprocess_exec(
                *self.argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
                env=self.env,
                start_new_session=True,
            )
        if self.nice:
            # Children it forks later (workers of `crmsync up`) inherit it.
            os.setpriority(os.PRIO_PROCESS, self.process.pid, self.nice)

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.returncode is None

    @property
    def returncode(self) -> int | None:
        return self.process.returncode if self.process else None

    def signal(self, sig: int, *, group: bool = False) -> None:
        """Send ``sig`` to the child (``group``: also to everything it spawned)."""
        if not self.alive or self.pid is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if group:
                os.killpg(self.pid, sig)
            else:
                os.kill(self.pid, sig)

    async def wait(self, within: float | None = None) -> int | None:
        """The exit code, or None if still running after ``within`` seconds."""
        if self.process is None:
            return None
        try:
            return await asyncio.wait_for(self.process.wait(), within)
        except TimeoutError:
            return None

    async def stop(self, grace: float = 10.0) -> int | None:
        """SIGTERM, wait up to ``grace`` seconds, then SIGKILL the whole group."""
        if self.process is None:
            return None
        if self.alive:
            self.signal(signal.SIGTERM)
            code = await self.wait(grace)
            if code is not None:
                self._kill_leftovers()
                return code
            self.signal(signal.SIGKILL, group=True)
        code = await self.wait(5.0)
        self._kill_leftovers()
        return code

    def _kill_leftovers(self) -> None:
        # Grandchildren (spawned worker processes) outliving their parent.
        if self.pid is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, signal.SIGKILL)

    def tail(self, lines: int = 20) -> str:
        """The last lines of the log, for error messages."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


async def stop_all(procs: Sequence[Proc], grace: float = 10.0) -> None:
    """Stop several children at once (each gets the full grace period)."""
    await asyncio.gather(*(p.stop(grace) for p in procs), return_exceptions=True)
