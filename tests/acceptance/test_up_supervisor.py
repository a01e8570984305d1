"""`crmsync up` replaces a worker process that dies, and stops everything on SIGTERM."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import psutil


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _workers(up: psutil.Process) -> list[psutil.Process]:
    # spawn's children: the worker processes (and possibly a resource tracker).
    return [c for c in up.children() if "resource_tracker" not in " ".join(c.cmdline())]


def _wait(pred: object, limit: float) -> bool:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if callable(pred) and pred():
            return True
        time.sleep(0.2)
    return False


def test_up_replaces_a_killed_worker_and_stops_cleanly(database_url: str, redis_url: str) -> None:
    port = _free_port()
    env = {
        **os.environ,
        "CRMSYNC_DATABASE_URL": database_url,
        "CRMSYNC_REDIS_URL": redis_url,
        "CRMSYNC_API_KEYS": "k",
    }
    exe = os.path.join(os.path.dirname(sys.executable), "crmsync")
    proc = subprocess.Popen(
        [exe, "up", "--port", str(port), "--processes", "2"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        up = psutil.Process(proc.pid)

        def healthy() -> bool:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as r:
                    return bool(r.status == 200)
            except OSError:
                return False

        assert _wait(healthy, 30), "the API never answered"
        assert _wait(lambda: len(_workers(up)) == 2, 20)
        victim = _workers(up)[0]
        victim.send_signal(signal.SIGKILL)
        victim.wait(10)

        def replaced() -> bool:
            pids = {c.pid for c in _workers(up) if c.is_running()}
            return len(pids) == 2 and victim.pid not in pids

        assert _wait(replaced, 15), "the killed worker was not replaced"
        workers = _workers(up)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        assert not any(w.is_running() and w.status() != psutil.STATUS_ZOMBIE for w in workers)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
