"""Scaling out on Redis Cluster: worker *processes* doing real work only ever
run scripts whose keys share one hash slot.

Two `crmsync worker` processes sync contacts to the mock CRMs while MONITOR
records every command on the test database; every EVALSHA (and EVAL) seen
must name keys of a single Redis Cluster slot, and the multi-key commands
outside scripts too.
"""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import redis.asyncio as aioredis
from redis.crc import key_slot

from crmsync.capture.relay import relay_once
from crmsync.queue.store import QueueStore
from crmsync_lab.mock.config import AccountSpec
from crmsync_lab.mock.limits import Window
from support import RedisMonitor, StartCrmsync, StartMock, add_connections, script_keys, to_mock


async def test_worker_processes_touch_one_slot_per_script(
    pool: asyncpg.Pool[Any],
    redis_client: aioredis.Redis,
    redis_monitor: RedisMonitor,
    start_mock_crm: StartMock,
    crmsync_process: StartCrmsync,
) -> None:
    mock = await start_mock_crm(
        AccountSpec("salesforce", "acme", limits=(Window(500, 1000),)),
        AccountSpec("hubspot", "acme", limits=(Window(500, 1000),)),
        latency_ms=1,
    )
    specs = [
        to_mock(mock, cid, crm, "acme", per_second=500)
        for cid, crm in (("sf", "salesforce"), ("hs", "hubspot"))
    ]
    await add_connections(pool, specs)
    for _ in range(2):
        await crmsync_process("worker", "--concurrency", "20")
    await pool.execute(
        "INSERT INTO contacts (id, email, last_name, company)"
        " SELECT 'k' || g, 'k' || g || '@example.com', 'L', 'Co'"
        " FROM generate_series(1, 40) g"
    )
    store = QueueStore(redis_client)
    async with asyncio.timeout(60):
        while True:
            await relay_once(pool, store, 1000)
            done = len(mock.records("salesforce", "acme")) + len(mock.records("hubspot", "acme"))
            if done == 80:
                break
            await asyncio.sleep(0.2)
    calls = [k for c in redis_monitor.commands if (k := script_keys(c["command"])) is not None]
    assert len(calls) > 10, "the workers ran no scripts"
    for keys in calls:
        assert keys, "a script call named no keys"
        assert len({key_slot(k.encode()) for k in keys}) == 1, keys
