"""Where a worker's time goes: py-spy on each worker during the measured window.

``--profile DIR`` attaches ``py-spy record`` (install it with ``pip install
py-spy``; it is not a dependency) to every worker process for the window,
keeps the collapsed stacks in ``DIR/<scenario>-<worker>.txt`` and adds to
the result the functions with the largest share of samples, by own time
and including callees. Without py-spy the option says so and measures anyway.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import sys
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

RATE_HZ = 100
_LINE = re.compile(r":\d+\)$")


def py_spy() -> str | None:
    beside = Path(sys.executable).with_name("py-spy")
    return str(beside) if beside.exists() else shutil.which("py-spy")


def _function(frame: str) -> str:
    """``send (crmsync/worker/claim.py:242)`` -> ``send (crmsync/worker/claim.py)``."""
    return _LINE.sub(")", frame)


def summarize(lines: Iterable[str], top: int = 12) -> dict[str, Any]:
    """Shares of samples per function of py-spy's collapsed stacks (``a;b;c 12``).

    ``self``: the sampled frame itself; ``inclusive``: anywhere on the stack
    (frames on every stack, like the event loop's entry, are left out).
    """
    own: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    total = 0
    for line in lines:
        stack, _, count = line.rstrip().rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [_function(f) for f in stack.split(";")]
        own[frames[-1]] += n
        for f in set(frames):
            incl[f] += n
    if total == 0:
        return {"samples": 0, "self": [], "inclusive": []}

    def shares(c: Counter[str], skip_everywhere: bool) -> list[tuple[str, float]]:
        out = []
        for f, n in c.most_common():
            if skip_everywhere and n >= total:
                continue
            out.append((f, round(n / total, 3)))
            if len(out) >= top:
                break
        return out

    return {"samples": total, "self": shares(own, False), "inclusive": shares(incl, True)}


class Profiler:
    """py-spy on several processes at once, for a fixed number of seconds."""

    def __init__(self, out_dir: Path, prefix: str) -> None:
        self.out_dir = out_dir
        self.prefix = prefix
        self.running: dict[str, tuple[asyncio.subprocess.Process, Path]] = {}
        self.error: str | None = None

    async def start(self, pids: Mapping[str, int], seconds: float) -> None:
        exe = py_spy()
        if exe is None:
            self.error = "py-spy not found (pip install py-spy): no profile taken"
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        for name, pid in pids.items():
            path = self.out_dir / f"{self.prefix}-{name}.txt"
            proc = await asyncio.create_subprocess_exec(
                exe,
                "record",
                "-p",
                str(pid),
                "-d",
                str(max(1, int(seconds))),
                "-r",
                str(RATE_HZ),
                "-f",
                "raw",
                "-o",
                str(path),
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE,
            )
            self.running[name] = (proc, path)

    async def finish(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, (proc, path) in self.running.items():
            _, err = await proc.communicate()
            if proc.returncode != 0 or not path.exists():
                out[name] = {"error": err.decode(errors="replace")[-300:]}
                continue
            with path.open() as f:
                out[name] = {"file": str(path), **summarize(f)}
        if self.error:
            out["error"] = self.error
        return out
