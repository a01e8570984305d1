"""Wake-ups: which connections just got work, told to every worker process.

A worker with nothing due sleeps until its earliest next-eligible time; the
relay (and a hand-back that made ids ready again) publishes the connections
that got work so sleeping workers claim at once.

- standalone: PUBLISH / SUBSCRIBE on ``keys.WAKE_CHANNEL``.
- cluster: sharded pub/sub (Redis 7). A connection's ids go to one of
  ``keys.WAKE_SHARDS`` channels (``keys.wake_shard``), each in a slot of its
  own, so the messages stay on the shard that serves that slot instead of
  crossing the whole cluster bus, and the load spreads over the masters. A
  listener SSUBSCRIBEs to every channel, one connection per master serving
  any of them.

A wake is a hint, never the only way work is found: a listener yields
``Wake(everything=True)`` whenever it (re)subscribed, since messages sent
meanwhile are lost, and the caller then looks at every connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import redis.asyncio as aioredis
import structlog
from redis.asyncio.client import PubSub
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import SlotNotCoveredError

from crmsync.queue import keys
from crmsync.redis_client import REDIS_ERRORS, RedisClient

log = structlog.get_logger(__name__)

# An idle subscription is PINGed this often; silence for twice as long counts as
# a dead link (a partition that leaves the socket open), and it is rebuilt.
PING_SECONDS = 5.0
RETRY_SECONDS = (0.1, 0.25, 0.5, 1.0, 2.0)  # between attempts to subscribe again
CALM_SECONDS = 30.0  # a failure after this long without one starts the delays over


@dataclass(frozen=True, slots=True)
class Wake:
    """Connections that got work; ``everything``: any connection may have."""

    ids: tuple[str, ...] = ()
    everything: bool = False


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


class _Backoff:
    """Growing delays between attempts, back to the first after a calm spell."""

    def __init__(self) -> None:
        self.failures = 0
        self.last = -CALM_SECONDS

    def delay(self) -> float:
        now = time.monotonic()
        if now - self.last > CALM_SECONDS:
            self.failures = 0
        self.failures += 1
        self.last = now
        return RETRY_SECONDS[min(self.failures, len(RETRY_SECONDS)) - 1]


class Wakeups:
    """Publishes and listens to wake-ups on either kind of Redis client."""

    def __init__(self, redis: RedisClient) -> None:
        self.redis = redis

    @property
    def clustered(self) -> bool:
        return isinstance(self.redis, RedisCluster)

    async def publish(self, connection_ids: Sequence[str]) -> None:
        """Announce ``connection_ids``: one PUBLISH standalone, one SPUBLISH per
        wake channel concerned on a cluster (pipelined: one round trip per node)."""
        if not connection_ids:
            return
        if not isinstance(self.redis, RedisCluster):
            await self.redis.publish(keys.WAKE_CHANNEL, ",".join(connection_ids))
            return
        shards: dict[int, list[str]] = {}
        for cid in connection_ids:
            shards.setdefault(keys.wake_shard(cid), []).append(cid)
        if len(shards) == 1:
            ((shard, ids),) = shards.items()
            await self.redis.spublish(keys.wake_channel(shard), ",".join(ids))
            return
        pipe = self.redis.pipeline(transaction=False)
        for shard, ids in shards.items():
            pipe.spublish(keys.wake_channel(shard), ",".join(ids))
        await pipe.execute()

    def listen(self) -> WakeListener:
        """``async with wakeups.listen() as wakes: async for wake in wakes: ...``"""
        return WakeListener(self.redis)


class WakeListener:
    """Subscribes in the background; iterating yields ``Wake`` values, the ids
    of everything received since the last one merged into one."""

    def __init__(self, redis: RedisClient) -> None:
        self.redis = redis
        self._pending: set[str] = set()
        self._everything = False
        self._ready = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False
        self._crashed: BaseException | None = None
        self._channels = (
            [keys.wake_channel(s) for s in range(keys.WAKE_SHARDS)]
            if isinstance(redis, RedisCluster)
            else [keys.WAKE_CHANNEL]
        )
        self._following: set[str] = set()
        self._all_followed = asyncio.Event()

    async def __aenter__(self) -> WakeListener:
        self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def __aiter__(self) -> WakeListener:
        return self

    async def __anext__(self) -> Wake:
        self.start()
        while not (self._pending or self._everything) or self._closed:
            if self._crashed is not None:
                raise self._crashed
            if self._closed:
                raise StopAsyncIteration
            self._ready.clear()
            await self._ready.wait()
        wake = Wake(tuple(sorted(self._pending)), self._everything)
        self._pending.clear()
        self._everything = False
        return wake

    async def subscribed(self) -> None:
        """Return once every wake channel is followed (the server confirmed it)."""
        self.start()
        await self._all_followed.wait()

    def start(self) -> None:
        if self._tasks or self._closed:
            return
        if isinstance(self.redis, RedisCluster):
            self._spawn(self._cluster(self.redis))
        else:
            self._spawn(self._standalone(self.redis))

    async def aclose(self) -> None:
        self._closed = True
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._ready.set()

    # -- feeding ------------------------------------------------------------------

    def _spawn(self, coro: Any) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[None]) -> None:
        """A background task ends only when cancelled; anything else is a bug
        the iterating caller must hear of, not a listener gone quiet."""
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self._crashed = task.exception()
            self._ready.set()

    def _got(self, data: Any) -> None:
        self._pending.update(c for c in _text(data).split(",") if c)
        self._ready.set()

    def _followed(self, channels: Sequence[str], *, yes: bool) -> None:
        if yes:
            self._following.update(channels)
            # Messages sent before the subscription are lost: look at everything.
            self._everything = True
            self._ready.set()
        else:
            self._following.difference_update(channels)
        if len(self._following) == len(self._channels):
            self._all_followed.set()
        else:
            self._all_followed.clear()

    async def _follow(self, pubsub: PubSub, kind: str, channels: Sequence[str]) -> None:
        """Subscribe to ``channels`` (``kind`` 'subscribe' or 'ssubscribe'), tell
        the caller it may have missed messages once the server confirmed every
        channel, then feed messages until the link fails (raises)."""
        message_type = "smessage" if kind == "ssubscribe" else "message"
        subscribe = pubsub.ssubscribe if kind == "ssubscribe" else pubsub.subscribe
        try:
            for channel in channels:  # one by one: sharded channels of a node differ in slot
                await subscribe(channel)
            waiting = set(channels)
            heard = time.monotonic()
            pinged = False
            while True:
                msg = await pubsub.get_message(timeout=PING_SECONDS)
                now = time.monotonic()
                if msg is None:
                    if now - heard > 2 * PING_SECONDS:
                        raise ConnectionError(f"no answer to PING in {2 * PING_SECONDS:.0f} s")
                    if not pinged:
                        await pubsub.ping()
                        pinged = True
                    continue
                heard, pinged = now, False
                mtype = msg["type"]
                if mtype == message_type:
                    self._got(msg["data"])
                elif mtype == kind:
                    waiting.discard(_text(msg["channel"]))
                    if not waiting:
                        self._followed(channels, yes=True)
                elif mtype in ("unsubscribe", "sunsubscribe"):
                    # The server dropped the channel: its slot moved (a failover).
                    raise ConnectionError(f"channel {_text(msg['channel'])} moved")
        finally:
            self._followed(channels, yes=False)

    # -- standalone -------------------------------------------------------------------

    async def _standalone(self, redis: aioredis.Redis) -> None:
        backoff = _Backoff()
        while True:
            pubsub = _node_client(
                redis.connection_pool.connection_class, redis.connection_pool.connection_kwargs
            ).pubsub()
            try:
                await self._follow(pubsub, "subscribe", self._channels)
            except REDIS_ERRORS as exc:
                log.warning("wake.listener_error", error=str(exc))
            finally:
                await _close(pubsub)
            await asyncio.sleep(backoff.delay())

    # -- cluster ----------------------------------------------------------------------

    async def _cluster(self, cluster: RedisCluster) -> None:
        """One follower per node serving wake channels; when one fails, learn the
        topology again and follow its channels wherever they are now."""
        orphans = list(self._channels)
        failed: asyncio.Queue[list[str]] = asyncio.Queue()
        backoff = _Backoff()
        first = True
        while True:
            try:
                if not first:
                    await cluster.nodes_manager.initialize()
                first = False
                by_node: dict[str, tuple[ClusterNode, list[str]]] = {}
                for channel in orphans:
                    node = cluster.get_node_from_key(channel)
                    if node is None:  # only asked of replicas; a master always answers
                        raise SlotNotCoveredError(f"no node serves {channel}")
                    by_node.setdefault(node.name, (node, []))[1].append(channel)
            except REDIS_ERRORS as exc:
                log.warning("wake.listener_error", error=str(exc))
                await asyncio.sleep(backoff.delay())
                continue
            for node, channels in by_node.values():
                self._spawn(self._cluster_node(node, channels, failed))
            orphans = await failed.get()
            await asyncio.sleep(backoff.delay())
            while not failed.empty():
                orphans += failed.get_nowait()

    async def _cluster_node(
        self, node: ClusterNode, channels: list[str], failed: asyncio.Queue[list[str]]
    ) -> None:
        pubsub = _node_client(node.connection_class, node.connection_kwargs).pubsub()
        try:
            await self._follow(pubsub, "ssubscribe", channels)
        except REDIS_ERRORS as exc:
            log.warning("wake.listener_error", node=node.name, error=str(exc))
        finally:
            await _close(pubsub)
            failed.put_nowait(channels)


def _node_client(connection_class: Any, connection_kwargs: dict[str, Any]) -> aioredis.Redis:
    """A client of its own for one subscription, without reconnect retries: a
    lost link must surface (messages were missed) rather than be resubscribed
    behind our back."""
    kwargs = {**connection_kwargs, "retry": Retry(NoBackoff(), 0)}
    return aioredis.Redis(
        connection_pool=aioredis.ConnectionPool(connection_class=connection_class, **kwargs)
    )


async def _close(pubsub: PubSub) -> None:
    with contextlib.suppress(Exception):
        await pubsub.aclose()
    with contextlib.suppress(Exception):
        await pubsub.connection_pool.disconnect()
