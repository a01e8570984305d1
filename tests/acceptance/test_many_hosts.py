"""Many hosts: three groups of worker processes whose clocks disagree share every limit.

Each group is a `crmsync worker` whose processes see a wall clock 2 s behind, on
time, or 3 s ahead (libfaketime, Debian's ``faketime``, installed by `make setup`),
as workers on three hosts with skewed clocks would. They work the same connections
on the real Redis Cluster; the mock CRMs (on the true clock) refuse and count every
request over any sliding window: 0 there, every record right, 0 duplicates.
"""

from __future__ import annotations

import asyncio
import glob
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
from helpers import assert_final, settle

from crmsync_lab.harness.cluster import Cluster, ClusterConfig
from crmsync_lab.harness.contacts import Contact, generate

OFFSETS = (-2.0, 0.0, 3.0)
# Windows of a second and of ten seconds: a skew of seconds against either.
ACCOUNTS = ("--salesforce", "2", "--hubspot", "2", "--sf-limit", "25/s", "--hs-limit", "60/10s")


def libfaketime() -> str:
    found = glob.glob("/usr/lib/*/faketime/libfaketime.so.1")
    if not found:
        pytest.fail("libfaketime is missing: run `make setup` (it installs Debian's faketime)")
    return found[0]


def skewed(offset: float) -> dict[str, str]:
    """The environment of a process whose wall clock is ``offset`` seconds off."""
    return {"LD_PRELOAD": libfaketime(), "FAKETIME": f"{offset:+g}"}


def cpu_seconds(pgid: int) -> float:
    """User + system CPU of every live process of the process group ``pgid``."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:  # fields after the name: state ppid pgrp ...
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


def people(n: int) -> list[Contact]:
    made = generate(n, id_prefix="mh", seed=31, no_company_share=0.0, inactive_share=0.0)
    return [replace(c, status="active") for c in made]


def test_faketime_moves_a_python_process_clock() -> None:
    """The seam this test relies on: the offset reaches Python's time.time()."""
    code = "import time; print(time.time())"
    for offset in OFFSETS:
        env = {**os.environ, **skewed(offset)}
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True)
        seen = float(out.stdout) - time.time()
        assert abs(seen - offset) < 0.5, (offset, seen)


@pytest.mark.slow
async def test_worker_groups_with_skewed_clocks_share_every_limit(
    cluster_config: ClusterConfig, redis_cluster_url: str
) -> None:
    config = replace(
        cluster_config,
        redis_url=redis_cluster_url,
        redis_mode="cluster",
        mode="split",
        processes=0,  # the groups below are the workers
        concurrency=20,
        mock_scenario="none",
        mock_args=ACCOUNTS,
        env={"CRMSYNC_RELAY_POLL_SECONDS": "0.5"},
    )
    c = Cluster(config)
    async with c:
        try:
            groups = [await c.start_worker(env=skewed(offset)) for offset in OFFSETS]
            await asyncio.sleep(2.0)  # started and idle
            before = [cpu_seconds(g.pid or 0) for g in groups]
            await c.put_contacts(people(150))
            took = await settle(c, 120)
            used = [cpu_seconds(g.pid or 0) - b for g, b in zip(groups, before, strict=True)]
            print(f"synced in {took:.1f}s; CPU seconds per group {used}")
            await assert_final(c)
            assert all(g.alive for g in groups)
            # Every group took part (an idle worker spends a few ms a second).
            assert min(used) >= 0.25 * max(used), used
        except BaseException:
            for p in [c.mock, c.server, c.relay, *c.workers]:
                if p is not None:
                    print(f"--- {p.name} ({p.log_path}) ---\n{p.tail(30)}")
            raise
