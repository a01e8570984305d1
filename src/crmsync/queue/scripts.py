"""The Lua scripts: read once from ``queue/lua``, called by SHA.

Each script is sent as ``_lib.lua`` + the script, so shared helpers (window
arithmetic, the breaker table) exist once. Calls go by EVALSHA; a NOSCRIPT
answer (Redis restarted, SCRIPT FLUSH, a replica promoted on a cluster: scripts
are not replicated) loads every script again and repeats the call, which is
safe because a script that was not found did not run. Loading all at once
keeps short the time in which a pipeline finds some scripts and not others.

On a Redis Cluster the client sends each EVALSHA to the node serving its keys'
slot (a call's keys share one), splits a pipeline per node, and sends SCRIPT
LOAD to every master.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Sequence
from functools import cache
from importlib import resources
from typing import Any

from redis.asyncio.cluster import RedisCluster
from redis.exceptions import NoScriptError

from crmsync.redis_client import RedisClient

Arg = str | int | float | bytes
# (keys, args) of one script call
Call = tuple[Sequence[str], Sequence[Arg]]

NAMES = (
    "claim",
    "enqueue",
    "ack",
    "readmit",
    "restamp",
    "retry",
    "release",
    "renew",
    "report",
    "block",
    "breaker",
    "depth",
    "learn",
    "heal",
    "snapshot",
    "mark",
)


@cache
def source(name: str) -> str:
    if name not in NAMES:
        raise KeyError(f"unknown script {name!r}")
    folder = resources.files("crmsync.queue") / "lua"
    lib = (folder / "_lib.lua").read_text(encoding="utf-8")
    body = (folder / f"{name}.lua").read_text(encoding="utf-8")
    return f"{lib}\n{body}"


@cache
def sha(name: str) -> str:
    return hashlib.sha1(source(name).encode("utf-8"), usedforsecurity=False).hexdigest()


class Scripts:
    """Runs the crmsync scripts on one Redis client."""

    def __init__(self, redis: RedisClient) -> None:
        self.redis = redis

    async def load(self) -> None:
        """SCRIPT LOAD every script: pipelined, or at once on every master of a
        cluster (whose pipelines refuse SCRIPT LOAD)."""
        if isinstance(self.redis, RedisCluster):
            await asyncio.gather(*(self.redis.script_load(source(name)) for name in NAMES))
            return
        pipe = self.redis.pipeline(transaction=False)
        for name in NAMES:
            pipe.script_load(source(name))
        await pipe.execute()

    async def call(self, name: str, keys: Sequence[str], args: Sequence[Arg]) -> Any:
        try:
            return await self.redis.evalsha(sha(name), len(keys), *keys, *args)
        except NoScriptError:
            await self.load()
            return await self.redis.evalsha(sha(name), len(keys), *keys, *args)

    async def call_many(self, name: str, calls: Sequence[Call]) -> list[Any]:
        """Pipelined calls of one script; results in order, errors raised."""
        if not calls:
            return []
        results = await self._pipeline(name, calls)
        missing = [i for i, r in enumerate(results) if isinstance(r, NoScriptError)]
        if missing:
            await self.load()
            again = await self._pipeline(name, [calls[i] for i in missing])
            for i, r in zip(missing, again, strict=True):
                results[i] = r
        for r in results:
            if isinstance(r, Exception):
                raise r
        return results

    async def call_mixed(
        self,
        calls: Sequence[tuple[str, Sequence[str], Sequence[Arg]]],
        *,
        extra: Sequence[tuple[Arg, ...]] = (),
    ) -> list[Any]:
        """Calls of several scripts, then plain commands (``extra``), in one
        pipeline; returns the scripts' results in order, errors raised."""
        if not calls and not extra:
            return []
        pipe = self.redis.pipeline(transaction=False)
        for name, keys, args in calls:
            pipe.evalsha(sha(name), len(keys), *keys, *args)
        for command in extra:
            pipe.execute_command(*command)
        results = list(await pipe.execute(raise_on_error=False))[: len(calls)]
        for i, r in enumerate(results):
            if isinstance(r, NoScriptError):
                # Scripts flushed (Redis restarted): an unfound script did not run.
                name, keys, args = calls[i]
                results[i] = await self.call(name, keys, args)
        for r in results:
            if isinstance(r, Exception):
                raise r
        return results

    async def _pipeline(self, name: str, calls: Sequence[Call]) -> list[Any]:
        digest = sha(name)
        pipe = self.redis.pipeline(transaction=False)
        for keys, args in calls:
            pipe.evalsha(digest, len(keys), *keys, *args)
        return list(await pipe.execute(raise_on_error=False))
