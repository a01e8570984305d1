"""scripts/redis_cluster.py on a fresh folder: builds a healthy cluster, reuses
it, brings back a node that died, and stops it cleanly."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from conftest import redis_cluster_script as rc


def _answers(port: int) -> bool:
    try:
        return bool(rc.command(port, "PING") == "PONG")
    except OSError:
        return False


@pytest.mark.slow
def test_start_reuse_repair_stop(tmp_path: Path) -> None:
    home = tmp_path / "cluster"
    try:
        url = rc.start(home)
        nodes = rc._nodes(home)
        assert len(nodes) == 6 and url == nodes[0].url
        assert sorted(n.role() for n in nodes) == ["master"] * 3 + ["slave"] * 3
        info = rc.fields(nodes[0].port, "CLUSTER", "INFO")
        assert info["cluster_state"] == "ok" and info["cluster_slots_ok"] == "16384"

        pids = [n.pid for n in nodes]
        t0 = time.monotonic()
        assert rc.start(home) == url  # reused as it is
        assert time.monotonic() - t0 < 5 and [n.pid for n in nodes] == pids

        replica = next(n for n in nodes if n.role() == "slave")
        assert replica.pid is not None
        os.kill(replica.pid, signal.SIGKILL)
        assert rc.start(home) == url  # the dead node comes back and rejoins
        assert replica.alive() and replica.pid != pids[nodes.index(replica)]
        assert rc.main(["status", "--dir", str(home)]) == 0
    finally:
        rc.stop(home, purge=True)
    assert not home.exists()
    assert not any(_answers(n.port) for n in nodes)
