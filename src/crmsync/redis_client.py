"""Opening Redis: one place for the client every process uses.

``CRMSYNC_REDIS_MODE`` picks the client: ``standalone`` (one server) or
``cluster`` (redis-py's cluster client, the URL naming one seed node; the rest
of the cluster is learnt from it). Code that talks to Redis takes a
``RedisClient``, which is either; every key of one connection shares a hash
tag (``queue/keys.py``), so its scripts and transactions stay in one slot.
"""

from __future__ import annotations

from typing import Any, TypeAlias, overload
from urllib.parse import urlsplit, urlunsplit

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.exceptions import RedisClusterException, RedisError

from crmsync.errors import UserError
from crmsync.settings import REDIS_MODES, RedisMode, Settings

RedisClient: TypeAlias = aioredis.Redis | RedisCluster
# What a Redis call may raise when the server or the cluster is unwell: the
# cluster client's own errors (no node reachable, a slot not covered) are not
# RedisError subclasses, so an ``except RedisError`` alone would let them through.
REDIS_ERRORS: tuple[type[Exception], ...] = (RedisError, RedisClusterException, OSError)
UNBOUNDED = 2**31  # connections per cluster node: opened as needed, never refused


def safe_url(url: str) -> str:
    """``url`` without its password, for messages and logs (each seed of a list)."""
    if "," in url:
        return ",".join(safe_url(u) for u in seed_urls(url))
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def seed_urls(url: str) -> list[str]:
    """The nodes a cluster URL names: ``redis://a:7000,b:7000,c:7000`` (or whole
    URLs after each comma) lists several seeds, so a process starts while any one
    of them answers; a bare ``host:port`` takes the first URL's scheme and
    credentials. The database path, if any, ends the list."""
    first, *rest = [part.strip() for part in url.split(",") if part.strip()] or [url]
    head = urlsplit(first)
    out = [first]
    for part in rest:
        if "://" in part:
            out.append(part)
            continue
        hostport = part.split("/", 1)[0]
        creds = head.netloc.rsplit("@", 1)[0] + "@" if "@" in head.netloc else ""
        out.append(urlunsplit(head._replace(netloc=creds + hostport, path="")))
    return out


def _db(url: str) -> int:
    last = url.rsplit(",", 1)[-1].strip()
    path = (urlsplit(last).path if "://" in last else last.partition("/")[2]).strip("/")
    return int(path) if path.isdigit() else 0


async def _is_cluster_node(client: aioredis.Redis, url: str, what: str) -> bool:
    """PING through ``client`` and ask whether the server is a cluster node;
    ``client`` is closed when the server does not answer."""
    try:
        await client.ping()
        info = await client.info("cluster")
    except Exception as exc:
        await client.aclose()
        raise UserError(
            f"cannot reach {what} at {safe_url(url)} ({exc}); "
            "set CRMSYNC_REDIS_URL or run `make setup`"
        ) from exc
    return bool(int(info.get("cluster_enabled", 0)))


def _without_db(url: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path=""))


def lazy_redis(url: str, mode: RedisMode, **kwargs: Any) -> RedisClient:
    """A client that connects on its first command (no round trip now): for the
    API's short-lived and long-lived clients, whose callers handle Redis being down.
    ``kwargs``: socket options both clients take (``socket_connect_timeout``...)."""
    if mode == "cluster":
        return _cluster_client([_without_db(u) for u in seed_urls(url)], **kwargs)
    return aioredis.from_url(url, **kwargs)


def _cluster_client(seeds: list[str], **kwargs: Any) -> RedisCluster:
    """redis-py's cluster client that starts from ``seeds[0]`` and, should that
    node not answer, from the others (credentials and TLS: the first URL's)."""
    others = [urlsplit(u) for u in seeds[1:]]
    nodes = [ClusterNode(p.hostname or "127.0.0.1", p.port or 6379) for p in others]
    kwargs.setdefault("health_check_interval", 10)
    # Per node: redis-py's cluster client refuses a command at once
    # (MaxConnectionsError) past its default of 100 connections to a node, which
    # a worker's concurrent sends (a permit taken per extra request) reach.
    kwargs.setdefault("max_connections", UNBOUNDED)
    return RedisCluster.from_url(seeds[0], startup_nodes=nodes or None, **kwargs)


async def _first_seed(seeds: list[str], url: str) -> tuple[str, bool]:
    """The first of ``seeds`` that answers, and whether it is a cluster node."""
    if len(seeds) == 1:
        probe = aioredis.from_url(seeds[0])
        clustered = await _is_cluster_node(probe, url, "the Redis Cluster seed node")
        await probe.aclose()
        return seeds[0], clustered
    for seed in seeds:
        probe = aioredis.from_url(seed)
        try:
            clustered = await _is_cluster_node(probe, seed, "a seed node")
        except UserError:
            continue  # the next seed may answer
        await probe.aclose()
        return seed, clustered
    raise UserError(
        f"cannot reach any Redis Cluster seed node of {safe_url(url)}; "
        "set CRMSYNC_REDIS_URL to nodes of your cluster"
    )


async def redis_of(settings: Settings) -> RedisClient:
    """``open_redis`` with the URL and mode of ``settings`` (what every process uses)."""
    return await open_redis(settings.redis_url, settings.redis_mode)


@overload
async def open_redis(url: str) -> aioredis.Redis: ...
@overload
async def open_redis(url: str, mode: RedisMode) -> RedisClient: ...
async def open_redis(url: str, mode: RedisMode = "standalone") -> RedisClient:
    """A client for ``url`` that answered, or one clear error."""
    if mode not in REDIS_MODES:
        raise UserError(f"CRMSYNC_REDIS_MODE is {mode!r}; use standalone or cluster")
    if mode == "cluster" and _db(url) != 0:
        raise UserError(
            f"CRMSYNC_REDIS_URL {safe_url(url)} names database {_db(url)}, but a Redis "
            "Cluster has only database 0; drop the /N from the URL"
        )
    if mode == "standalone":
        if "," in url:
            raise UserError(
                f"CRMSYNC_REDIS_URL {safe_url(url)} names several nodes; a list of seed "
                "nodes is for CRMSYNC_REDIS_MODE=cluster, standalone takes one server"
            )
        single = aioredis.from_url(url, health_check_interval=10)
        if await _is_cluster_node(single, url, "Redis"):
            await single.aclose()
            raise UserError(
                f"the Redis at {safe_url(url)} is a Redis Cluster node; "
                "set CRMSYNC_REDIS_MODE=cluster"
            )
        return single
    seeds = [_without_db(u) for u in seed_urls(url)]
    answering, clustered = await _first_seed(seeds, url)
    if not clustered:
        raise UserError(
            f"the Redis at {safe_url(answering)} is not a cluster node (cluster mode is off); "
            "set CRMSYNC_REDIS_MODE=standalone or name a node of your Redis Cluster"
        )
    client = _cluster_client([answering, *(s for s in seeds if s != answering)])
    try:
        await client.initialize()
    except Exception as exc:
        await client.aclose()
        raise UserError(
            f"cannot use the Redis Cluster seeded by {safe_url(url)} ({exc}); "
            "check that every slot is served (`redis-cli --cluster check`)"
        ) from exc
    return client
