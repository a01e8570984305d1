"""A Redis Cluster master SIGKILLed mid-backlog, the whole system running on it.

API, relay and two workers as processes on the real test cluster (3 masters with a
replica each); the mock CRMs refuse, and count as a violation, every request over
any account's sliding window. A master serving some connections is killed while
their backlog drains and while new changes keep arriving through the API; its
replica is promoted by the cluster itself, without WAIT first, so the writes it had
not received are lost. No operator step follows: at the end every CRM record is
what PostgreSQL says, with 0 duplicates and 0 requests over any limit.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import replace

import pytest
from helpers import ProxiedCluster, assert_final, settle, wait_until
from redis.crc import key_slot

from conftest import LocalCluster, redis_cluster_script
from crmsync.queue import keys
from crmsync_lab.harness.cluster import ClusterConfig
from crmsync_lab.harness.contacts import Contact, generate

# Windows longer than the failover takes (~5 s): admissions the new master never
# heard of still count at the CRM when the connection sends again.
ACCOUNTS = ("--salesforce", "4", "--hubspot", "4", "--sf-limit", "60/5s", "--hs-limit", "100/10s")
ENV = {
    "CRMSYNC_LIMIT_MARGIN": "0.1",
    "CRMSYNC_LEASE_SECONDS": "5",
    "CRMSYNC_RETRY_BASE_SECONDS": "0.2",
    "CRMSYNC_RETRY_CAP_SECONDS": "2",
    "CRMSYNC_BREAKER_RECOVERY_SECONDS": "2",
    "CRMSYNC_SHUTDOWN_GRACE_SECONDS": "2",
    "CRMSYNC_RELAY_POLL_SECONDS": "0.5",
}


def people(n: int, prefix: str, seed: int) -> list[Contact]:
    """Contacts every CRM creates and updates (active, with a company)."""
    made = generate(n, id_prefix=prefix, seed=seed, no_company_share=0.0, inactive_share=0.0)
    return [replace(c, status="active") for c in made]


def victim(home: LocalCluster, ids: list[str]) -> tuple[int, list[str]]:
    """A slot of the master serving most connections, and those connections."""
    assert home.home is not None
    by_master: dict[int, list[tuple[int, str]]] = {}
    for cid in ids:
        slot = key_slot(keys.connection(cid).ready.encode())
        port = redis_cluster_script.master_of(home.home, slot).port
        by_master.setdefault(port, []).append((slot, cid))
    served = max(by_master.values(), key=len)
    return served[0][0], [cid for _slot, cid in served]


async def trickle(c: ProxiedCluster, items: list[Contact], seconds: float) -> None:
    """Write ``items`` through the API a few at a time over ``seconds``."""
    parts = [items[i : i + 5] for i in range(0, len(items), 5)]
    for part in parts:
        await c.put_contacts(part)
        await asyncio.sleep(seconds / len(parts))


@pytest.fixture
def failover_config(
    cluster_config: ClusterConfig, redis_cluster: LocalCluster, redis_cluster_url: str
) -> ClusterConfig:
    return replace(
        cluster_config,
        # Every node as a seed: the master killed may be the one a URL would name.
        redis_url=redis_cluster.seed_list(),
        redis_mode="cluster",
        mode="split",
        processes=2,
        concurrency=20,
        mock_scenario="none",
        mock_args=ACCOUNTS,
        env=ENV,
    )


@pytest.fixture
def restarted(redis_cluster: LocalCluster) -> Iterator[list[object]]:
    """Nodes the test killed, started again afterwards (they rejoin as replicas)."""
    dead: list[object] = []
    yield dead
    for node in dead:
        redis_cluster.restart(node)


@pytest.mark.slow
async def test_a_master_killed_mid_backlog_loses_and_bursts_nothing(
    failover_config: ClusterConfig, redis_cluster: LocalCluster, restarted: list[object]
) -> None:
    c = ProxiedCluster(failover_config)
    async with c:
        try:
            first = people(150, "fo", seed=21)
            await c.put_contacts(first)
            ids = [conn.id for conn in c.connections]
            slot, served = victim(redis_cluster, ids)
            total = len(first) * len(ids)

            async def a_third_synced() -> bool:
                n = await c.pool.fetchval("SELECT count(*) FROM sync_state WHERE status = 'synced'")
                return bool(n >= total // 3)

            await wait_until(a_third_synced, 60, "a third synced", cluster=c, poll=0.05)
            # Changes keep coming through the second the replica misses, the death and
            # the promotion: new contacts and updates of ones synced, queued or in flight.
            more = people(40, "fo-new", seed=22)
            changed = [replace(p, first_name="Changed") for p in first[::5]]
            writes = asyncio.create_task(trickle(c, [*more, *changed], seconds=4.0))
            killed_at = time.time()
            dead = await asyncio.to_thread(redis_cluster.kill_master_unreplicated, slot, 1.0)
            restarted.append(dead)
            new = await asyncio.to_thread(redis_cluster.wait_promoted, slot, dead)
            await writes
            assert new.port != dead.port
            print(f"killed {dead.port} (serving {served}); {new.port} took over "
                  f"after {time.time() - killed_at:.1f}s")  # fmt: skip
            await settle(c, 90)
            print("mock totals:", (await c.mock_stats())["totals"])
            await assert_final(c)
            c.check_alive()
            assert all(w.alive for w in c.workers), "a worker died with the master"
        except BaseException:
            for p in [c.mock, c.server, c.relay, *c.workers]:
                if p is not None:
                    print(f"--- {p.name} ({p.log_path}) ---\n{p.tail(30)}")
            raise
