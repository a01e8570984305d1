"""Every script call touches keys of one Redis Cluster hash slot.

Three views: the KEYS lists crmsync passes (recorded by wrapping the script
runner), what the scripts really touch (recorded with MONITOR, on one server
and on every master of a real cluster, whose CLUSTER KEYSLOT has the last
word), and every key of any connection id on the real cluster.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import pytest
import redis.asyncio as aioredis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot

from conftest import redis_cluster_script
from crmsync.breaker import CrmBreaker
from crmsync.crm.quota import Usage
from crmsync.crm_limits import CrmSpec
from crmsync.queue import keys, scripts
from crmsync.queue.store import Band, QueueStore
from crmsync.ratelimit import RateWindow, prefill
from crmsync.redis_client import RedisClient
from support import RedisMonitor, script_keys


def slot(key: str) -> int:
    return key_slot(key.encode())


async def lifecycle(redis: RedisClient, step: Callable[[], Awaitable[None]]) -> None:
    """Every script, on two connections and two CRMs; ``step`` runs after each call."""
    store = QueueStore(redis)
    breaker = CrmBreaker(redis, threshold=1, recovery_ms=1, probe_ms=1000)
    a, b = f"ks-{uuid.uuid4().hex[:6]}", f"ks-{uuid.uuid4().hex[:6]}"
    for cid in (a, b):
        await store.configure(
            cid,
            [RateWindow(100, 1000), RateWindow(1000, 10_000), RateWindow(10**6, 86_400_000)],
            breaker_threshold=1,
            breaker_recovery_ms=1,
            paused=None,
            # b holds a CRM model too: its in-flight zset goes with the scripts' keys.
            crm=CrmSpec("daily", 10**6, 100, 5) if cid == b else None,
        )
    await store.enqueue([(c, f"x{i}", i % 3) for i in range(20) for c in (a, b)])
    await step()
    for cid in (a, b):
        c = await store.claim(cid, max_requests=5, batch_size=2, lease_ms=30_000)
        await step()
        await store.enqueue([(cid, c.ids[0], Band.CREATE)])  # leased: requeue
        await step()
        await store.renew(c, c.ids, 30_000)
        await step()
        c = await store.readmit(c, 2)
        await step()
        await store.restamp(cid, c.admitted_ms, 1)
        await step()
        await store.ack(c, c.ids[:2], refund=1)
        await step()
        await store.learn(cid, Usage(1, 10**6))  # a: no CRM model, no call
        await step()
        await store.retry_later(c, {c.ids[2]: 0.0})
        await step()
        await store.release(c, c.ids[3:])
        await step()
        await store.report(c, [False])
        await step()
        await asyncio.sleep(0.01)
        probe = await store.claim(cid, max_requests=5, batch_size=2, lease_ms=30_000)
        assert probe.probe
        await step()
        await store.report(probe, [True])
        await step()
        await store.block(cid, 0.001)
        await step()
        await store.depth(cid)
        await step()
        windows = await store.enforced_windows(cid)
        await store.snapshot(cid, [w.window_ms for w in windows])
        await step()
        await store.heal(cid, "lineage-1", prefill(windows, {}, probe.redis_ms, store.margin))
        await step()
        await store.mark(cid, "lineage-2")
        await step()
    for crm in ("salesforce", "hubspot"):
        await breaker.allow(crm)
        await step()
        await breaker.record(crm, [False])
        await step()


async def test_keys_passed_to_each_script_share_one_slot(
    any_redis: RedisClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[tuple[str, list[str]]] = []
    call, call_many = scripts.Scripts.call, scripts.Scripts.call_many
    call_mixed = scripts.Scripts.call_mixed

    async def spy_call(self: scripts.Scripts, name: str, keys: Sequence[str], args: Any) -> Any:
        seen.append((name, list(keys)))
        return await call(self, name, keys, args)

    async def spy_many(self: scripts.Scripts, name: str, calls: Sequence[scripts.Call]) -> Any:
        seen.extend((name, list(k)) for k, _ in calls)
        return await call_many(self, name, calls)

    async def spy_mixed(
        self: scripts.Scripts,
        calls: Sequence[tuple[str, Sequence[str], Sequence[scripts.Arg]]],
        *,
        extra: Sequence[tuple[scripts.Arg, ...]] = (),
    ) -> Any:
        seen.extend((name, list(k)) for name, k, _ in calls)
        return await call_mixed(self, calls, extra=extra)

    monkeypatch.setattr(scripts.Scripts, "call", spy_call)
    monkeypatch.setattr(scripts.Scripts, "call_many", spy_many)
    monkeypatch.setattr(scripts.Scripts, "call_mixed", spy_mixed)

    async def nothing() -> None:
        return None

    await lifecycle(any_redis, nothing)
    assert {name for name, _ in seen} == set(scripts.NAMES)
    for name, passed in seen:
        assert passed, name
        assert len({slot(k) for k in passed}) == 1, (name, passed)
    # Different connections and CRMs spread over slots (hash tags are per connection).
    assert len({slot(passed[0]) for _, passed in seen}) == 4


@contextlib.asynccontextmanager
async def _monitors(redis: RedisClient, url: str) -> AsyncIterator[list[RedisMonitor]]:
    """MONITOR on every server that runs scripts (the server, or each master of a
    cluster), from before the block until its end; one log each."""
    if isinstance(redis, RedisCluster):
        clients = [aioredis.Redis(host=n.host, port=int(n.port)) for n in redis.get_primaries()]
        db = 0
    else:
        clients = [aioredis.from_url(url)]
        db = clients[0].connection_pool.connection_kwargs.get("db", 0)
    logs = [RedisMonitor() for _ in clients]
    async with contextlib.AsyncExitStack() as stack:
        for client, log in zip(clients, logs, strict=True):
            stack.push_async_callback(client.aclose)
            m = await stack.enter_async_context(client.monitor())

            async def read(m: Any = m, log: RedisMonitor = log) -> None:
                while True:
                    cmd: dict[str, Any] = await m.next_command()
                    if cmd["db"] == db:
                        log.add(cmd)

            reader = asyncio.create_task(read())
            stack.push_async_callback(_cancelled, reader)
        yield logs


async def _cancelled(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def _marker(redis: RedisClient, marker: str) -> None:
    """``marker`` seen by the MONITOR of every server (each master of a cluster)."""
    if isinstance(redis, RedisCluster):
        await redis.execute_command("ECHO", marker, target_nodes=RedisCluster.PRIMARIES)
    else:
        await redis.echo(marker)


async def test_keys_scripts_touch_share_one_slot(
    any_redis: RedisClient, any_redis_url: str
) -> None:
    """MONITOR shows the commands run inside scripts; between two markers sent
    after each call, all of them must hit the slot of that call's keys. On a
    cluster every master is watched and the slots are the server's own
    CLUSTER KEYSLOT."""
    marker = f"keyslot-marker-{uuid.uuid4().hex}"
    markers_sent = 0
    async with _monitors(any_redis, any_redis_url) as logs:

        async def step() -> None:
            nonlocal markers_sent
            await _marker(any_redis, marker)
            markers_sent += 1

        await lifecycle(any_redis, step)
        for log in logs:

            def caught_up(log: RedisMonitor = log) -> bool:
                return log.count(marker) == markers_sent

            # MONITOR may lag far behind on a busy machine (it streams other runs' too).
            await log.wait_for(caught_up, within=120)

    slots: dict[str, int] = {}

    async def server_slot(key: str) -> int:
        if key not in slots:
            slots[key] = (
                int(await any_redis.cluster_keyslot(key))
                if isinstance(any_redis, RedisCluster)
                else slot(key)
            )
        return slots[key]

    checked = 0
    for log in logs:
        segments: list[list[dict[str, Any]]] = [[]]
        for cmd in log.commands:
            if marker in cmd["command"]:
                segments.append([])
            else:
                segments[-1].append(cmd)
        assert len(segments) == markers_sent + 1
        for seg in segments[:-1]:
            allowed = {await server_slot(k) for c in seg for k in script_keys(c["command"]) or ()}
            for c in seg:
                if c["client_type"] != "lua":
                    continue
                parts = [p.strip('"') for p in c["command"].split(" ")]
                if parts[0].upper() in {"TIME", "PUBLISH", "SPUBLISH"}:
                    continue
                if [p.upper() for p in parts[:2]] == ["CLUSTER", "MYID"]:
                    continue  # which node holds the marker: no key
                assert await server_slot(parts[1]) in allowed, c["command"]
                checked += 1
    assert checked > 100


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(cid=st.text(min_size=1, max_size=24))
def test_every_key_of_any_connection_is_in_one_slot_of_a_real_cluster(
    redis_cluster_url: str, cid: str
) -> None:
    """Whatever its id (braces, colons, any text), a connection's keys share the
    slot the cluster's own CLUSTER KEYSLOT gives."""
    port = int(redis_cluster_url.rsplit(":", 1)[1])
    all_keys = keys.connection(cid).all_keys([1000, 10_000, 86_400_000])
    got = {redis_cluster_script.command(port, "CLUSTER", "KEYSLOT", k) for k in all_keys}
    assert got == {slot(all_keys[0])}, (cid, got)
