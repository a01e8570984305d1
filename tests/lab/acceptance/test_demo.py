"""`crmsync demo` end to end, and the harness driving a split cluster.

Whole processes against the real PostgreSQL and Redis: the demo runs in its
own database (dropped afterwards) and the test Redis database.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import asyncpg
import pytest

from crmsync_lab.harness import contacts
from crmsync_lab.harness.cluster import Cluster, ClusterConfig, database_named
from crmsync_lab.harness.processes import crmsync_argv

BASE_DSN = os.environ.get("CRMSYNC_DATABASE_URL", "postgresql://127.0.0.1:5432/crmsync")


def _drop(name: str) -> None:
    async def go() -> None:
        admin = await asyncpg.connect(database_named(BASE_DSN, "postgres"))
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()

    asyncio.run(go())


@pytest.fixture
def demo_db() -> Iterator[str]:
    name = f"crmsync_demo_test_{uuid.uuid4().hex[:8]}"
    try:
        yield name
    finally:
        _drop(name)


def _demo_env(redis_url: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update({"CRMSYNC_DATABASE_URL": BASE_DSN, "CRMSYNC_REDIS_URL": redis_url})
    return env


def _run_demo(args: list[str], env: dict[str, str], cwd: Path, timeout: float) -> tuple[int, str]:
    proc = subprocess.run(
        crmsync_argv("demo", *args),
        env=env,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
        check=False,
    )
    return proc.returncode, proc.stdout


def test_demo_100_contacts_verifies(redis_url: str, demo_db: str, tmp_path: Path) -> None:
    started = time.monotonic()
    code, out = _run_demo(
        ["--contacts", "100", "--database", demo_db, "--timeout", "90"],
        _demo_env(redis_url),
        tmp_path,
        timeout=150,
    )
    assert code == 0, out
    assert "OK in" in out and "0 limit violations, 0 duplicates" in out, out
    for conn in ("sf-01", "sf-02", "hs-01", "hs-02"):
        assert f" {conn} " in out, out
    # Every child's output was kept for reading after a failure.
    runs = list((tmp_path / ".crmsync" / "runs").iterdir())
    assert len(runs) == 1 and (runs[0] / "mock-crm.log").exists() and (runs[0] / "up.log").exists()
    assert time.monotonic() - started < 120


def test_demo_rejects_bad_options(tmp_path: Path) -> None:
    code, out = _run_demo(["--scenario", "huge"], dict(os.environ), tmp_path, timeout=60)
    assert code == 2 and "--scenario" in out, out


@pytest.mark.slow
def test_demo_with_faults_still_verifies(redis_url: str, demo_db: str, tmp_path: Path) -> None:
    code, out = _run_demo(
        ["--contacts", "200", "--faults", "--database", demo_db, "--timeout", "120"],
        _demo_env(redis_url),
        tmp_path,
        timeout=200,
    )
    assert code == 0, out
    assert "faults injected" in out, out


@pytest.mark.slow
def test_demo_stops_everything_on_sigint(redis_url: str, demo_db: str, tmp_path: Path) -> None:
    proc = subprocess.Popen(
        crmsync_argv("demo", "--contacts", "2000", "--database", demo_db),
        env=_demo_env(redis_url),
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    for line in proc.stdout:  # wait until the system is up and loading
        if "connections:" in line:
            break
    time.sleep(2.0)
    proc.send_signal(signal.SIGINT)
    out = proc.communicate(timeout=60)[0]
    assert proc.returncode == 130, out
    runs = list((tmp_path / ".crmsync" / "runs").iterdir())
    pids = _children_left(runs[0])
    assert pids == [], f"processes left running: {pids}"


def _children_left(run_dir: Path) -> list[int]:
    """Processes started for this run (the harness marks their environment)."""
    left = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            env = (entry / "environ").read_bytes()
        except OSError:
            continue
        if f"CRMSYNC_HARNESS_RUN_DIR={run_dir.resolve()}\0".encode() in env:
            left.append(int(entry.name))
    return left


@pytest.mark.slow
async def test_cluster_survives_a_killed_worker(cluster_config: ClusterConfig) -> None:
    config = replace(cluster_config, processes=2, env={"CRMSYNC_LEASE_SECONDS": "3"})
    async with Cluster(config) as cluster:
        people = contacts.generate(400, seed=5)
        await cluster.put_contacts(people)
        await asyncio.sleep(1.0)
        await cluster.kill_worker(0, signal.SIGKILL)  # dies holding leases
        updated, deleted = contacts.plan_changes(people, seed=6)
        await cluster.put_contacts(updated)
        await cluster.delete(deleted)
        await cluster.start_worker()
        assert await cluster.wait_synced(within=90), await _why(cluster)
        report = await cluster.verify()
        assert report.ok, report.problems()
        assert [w.alive for w in cluster.workers] == [False, True, True]


async def _why(cluster: Cluster) -> str:
    """What is still pending, per connection, for a failure message."""
    snap = await cluster.status()
    unsettled = await cluster.unsettled()
    rows = [
        f"{c['id']}: unsettled {unsettled.get(c['id'], 0)}, queue {c.get('queue')}, "
        f"breaker {c.get('breaker')}, blocked {c.get('blocked_for_s')}s, sync {c.get('sync')}"
        for c in snap["connections"]
    ]
    return "\n".join([f"outbox {snap.get('totals', {}).get('outbox')}", *rows])
