"""`crmsync up` replaces a worker process that dies, and stops everything on SIGTERM."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable

import aiohttp
import psutil

from crmsync_lab.harness.processes import free_port
from support import StartCrmsync


def _workers(up: psutil.Process) -> list[psutil.Process]:
    # spawn's children: the worker processes (and possibly a resource tracker).
    return [c for c in up.children() if "resource_tracker" not in " ".join(c.cmdline())]


async def _until(check: Callable[[], bool], within: float) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if check():
            return True
        await asyncio.sleep(0.2)
    return False


async def _healthy(url: str, within: float) -> bool:
    deadline = time.monotonic() + within
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1)) as http:
        while time.monotonic() < deadline:
            try:
                async with http.get(f"{url}/healthz") as r:
                    if r.status == 200:
                        return True
            except (aiohttp.ClientError, TimeoutError):
                pass
            await asyncio.sleep(0.2)
    return False


async def test_up_replaces_a_killed_worker_and_stops_cleanly(
    crmsync_process: StartCrmsync,
) -> None:
    port = free_port()
    args = ("up", "--port", str(port), "--processes", "2")
    proc = await crmsync_process(*args, env={"CRMSYNC_API_KEYS": "k"})
    assert proc.pid is not None
    up = psutil.Process(proc.pid)
    assert await _healthy(f"http://127.0.0.1:{port}", 30), "the API never answered"
    assert await _until(lambda: len(_workers(up)) == 2, 20)
    victim = _workers(up)[0]
    victim.send_signal(signal.SIGKILL)
    await asyncio.to_thread(victim.wait, 10)

    def replaced() -> bool:
        pids = {c.pid for c in _workers(up) if c.is_running()}
        return len(pids) == 2 and victim.pid not in pids

    assert await _until(replaced, 15), "the killed worker was not replaced"
    workers = _workers(up)
    proc.signal(signal.SIGTERM)
    assert await proc.wait(30) == 0, proc.tail()
    assert not any(w.is_running() and w.status() != psutil.STATUS_ZOMBIE for w in workers)
