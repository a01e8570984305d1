"""How late the mock's event loop wakes up.

A real CRM counts requests at its own edge; the mock counts them when its event
loop reads them. If that loop stalls (the host's cores are busy with everything
else a benchmark runs), requests sent over the stall are counted together when
it resumes, and a stall longer than the limiter's margin can carry one pacing
burst into the next window: a violation the sender did not cause. The bench
reports stalls beside violations so a reader can tell the two apart.

The largest stalls were the mock's own full garbage collections (90 ms with
~200k records kept), so the mock's own process (``run_mock``; not a mock inside
a test's process) freezes what survives a full collection (``gc.freeze``): the
next one scans only what came after, and pauses stay short. Objects alive at a
freeze that later become cyclic garbage are never collected: a mock that lives
for one run can afford that.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time
from collections import deque
from typing import Any

TICK_S = 0.01
REPORT_MS = 20.0  # stalls at least this long are kept
KEEP = 500


class LoopWatch:
    def __init__(self, *, freeze_survivors: bool = False) -> None:
        self.freeze_survivors = freeze_survivors
        self.stalls: deque[tuple[float, float]] = deque(maxlen=KEEP)  # (end, ms)
        self.count = 0
        self.max_ms = 0.0
        self._task: asyncio.Task[None] | None = None
        # Python's own pauses: the longest collection of the oldest generation.
        self.gc_max_ms = 0.0
        self.gc_full = 0
        self._gc_t0 = 0.0

    def _on_gc(self, phase: str, info: dict[str, Any]) -> None:
        if info.get("generation") != 2:
            return
        if phase == "start":
            self._gc_t0 = time.perf_counter()
            return
        self.gc_full += 1
        self.gc_max_ms = max(self.gc_max_ms, (time.perf_counter() - self._gc_t0) * 1000.0)
        if self.freeze_survivors and self._task is not None:  # not from inside the callback
            self._task.get_loop().call_soon(gc.freeze)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())
        gc.callbacks.append(self._on_gc)

    async def stop(self) -> None:
        with contextlib.suppress(ValueError):
            gc.callbacks.remove(self._on_gc)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        before = time.monotonic()
        while True:
            await asyncio.sleep(TICK_S)
            now = time.monotonic()
            late_ms = (now - before - TICK_S) * 1000.0
            before = now
            if late_ms >= REPORT_MS:
                self.count += 1
                self.max_ms = max(self.max_ms, late_ms)
                self.stalls.append((now, late_ms))

    def reset(self) -> None:
        self.stalls.clear()
        self.count = 0
        self.max_ms = 0.0
        self.gc_full = 0
        self.gc_max_ms = 0.0

    def stats(self) -> dict[str, Any]:
        return {
            "stalls": self.count,
            "stall_ms_at_least": REPORT_MS,
            "max_stall_ms": round(self.max_ms, 1),
            "gc_full_collections": self.gc_full,
            "gc_max_ms": round(self.gc_max_ms, 1),
            "recent": [[round(end, 3), round(ms, 1)] for end, ms in self.stalls],
        }
