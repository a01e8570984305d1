"""Scaling out on Redis Cluster: worker *processes* doing real work only ever
run scripts whose keys share one hash slot.

Two `crmsync worker` processes sync contacts to the mock CRMs while MONITOR
records every command on the test database; every EVALSHA (and EVAL) seen
must name keys of a single Redis Cluster slot, and the multi-key commands
outside scripts too.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import uuid
from typing import Any

import redis.asyncio as aioredis
from redis.crc import key_slot

from crmsync import db
from crmsync.capture.relay import relay_once
from crmsync.mock.config import AccountSpec, MockConfig
from crmsync.mock.limits import Window
from crmsync.mock.server import start_mock
from crmsync.queue.store import QueueStore
from crmsync.settings import Settings


def script_keys(command: str) -> list[str] | None:
    parts = command.split(" ")
    if parts[0].upper() not in ("EVALSHA", "EVAL"):
        return None
    n = int(parts[2])
    return parts[3 : 3 + n]


async def test_worker_processes_touch_one_slot_per_script(settings: Settings) -> None:
    mock = await start_mock(
        MockConfig(
            accounts=[
                AccountSpec("salesforce", "acme", limits=(Window(500, 1000),)),
                AccountSpec("hubspot", "acme", limits=(Window(500, 1000),)),
            ],
            latency_ms=1,
            jitter_ms=0,
        )
    )
    pool = await db.create_pool(settings.database_url)
    redis = aioredis.from_url(settings.redis_url)
    monitor_client = aioredis.from_url(settings.redis_url)
    dbn = redis.connection_pool.connection_kwargs.get("db", 0)
    seen: list[str] = []
    # MONITOR streams every command of the server (other test runs' too): read
    # until this marker, sent after the work, rather than for a fixed time.
    marker = f"cluster-keys-marker-{uuid.uuid4().hex}"
    marked = asyncio.Event()
    env = {
        **os.environ,
        "CRMSYNC_DATABASE_URL": settings.database_url,
        "CRMSYNC_REDIS_URL": settings.redis_url,
    }
    procs: list[asyncio.subprocess.Process] = []
    try:
        for cid, crm in (("sf", "salesforce"), ("hs", "hubspot")):
            await pool.execute(
                "INSERT INTO connections (id, crm, account, base_url, token, rate_limits)"
                " VALUES ($1, $2, 'acme', $3, $4, $5)",
                cid,
                crm,
                mock.base_url(crm, "acme"),
                mock.token(crm, "acme"),
                [{"limit": 500, "window_ms": 1000}],
            )
        async with monitor_client.monitor() as m:

            async def read() -> None:
                while True:
                    cmd: dict[str, Any] = await m.next_command()
                    if marker in cmd["command"]:
                        marked.set()
                    elif cmd["db"] == dbn:
                        seen.append(cmd["command"])

            reader = asyncio.create_task(read())
            for _ in range(2):
                procs.append(
                    await asyncio.create_subprocess_exec(
                        os.path.join(os.path.dirname(sys.executable), "crmsync"),
                        "worker",
                        "--concurrency",
                        "20",
                        env=env,
                        stdout=asyncio.subprocess.DEVNULL,
                        stderr=asyncio.subprocess.DEVNULL,
                    )
                )
            await pool.execute(
                "INSERT INTO contacts (id, email, last_name, company)"
                " SELECT 'k' || g, 'k' || g || '@example.com', 'L', 'Co'"
                " FROM generate_series(1, 40) g"
            )
            store = QueueStore(redis)
            async with asyncio.timeout(60):
                while True:
                    await relay_once(pool, store, 1000)
                    done = len(mock.records("salesforce", "acme")) + len(
                        mock.records("hubspot", "acme")
                    )
                    if done == 80:
                        break
                    await asyncio.sleep(0.2)
            await redis.echo(marker)
            await asyncio.wait_for(marked.wait(), timeout=120)
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
    finally:
        for p in procs:
            with contextlib.suppress(ProcessLookupError):
                p.send_signal(signal.SIGTERM)
        for p in procs:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(p.wait(), 20)
        await monitor_client.aclose()
        await redis.aclose()
        await pool.close()
        await mock.close()
    calls = [k for k in (script_keys(c) for c in seen) if k is not None]
    assert len(calls) > 10, "the workers ran no scripts"
    for keys in calls:
        assert keys, "a script call named no keys"
        assert len({key_slot(k.strip('"').encode()) for k in keys}) == 1, keys
