"""Every Redis key crmsync uses, built here and nowhere else.

All keys of one connection share the hash tag ``{c:<id>}`` so every Lua script
touches a single Redis Cluster slot.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable
from dataclasses import dataclass

PREFIX = "crmsync"
# Pub/sub channel: the relay and operators announce connections with new work.
WAKE_CHANNEL = f"{PREFIX}:wake"
# On a Redis Cluster the announcements go to sharded channels instead (one slot
# each), a connection's to channel ``wake_shard(id)`` of WAKE_SHARDS.
WAKE_SHARDS = 16


@dataclass(frozen=True, slots=True)
class ConnectionKeys:
    connection_id: str

    @property
    def tag(self) -> str:
        return f"{PREFIX}:{{c:{self.connection_id}}}"

    @property
    def ready(self) -> str:  # zset id -> band * 1e13 + enqueue ms
        return f"{self.tag}:ready"

    @property
    def leases(self) -> str:  # zset id -> lease deadline ms
        return f"{self.tag}:leases"

    @property
    def lease_tokens(self) -> str:  # hash id -> claim token
        return f"{self.tag}:leasetok"

    @property
    def delayed(self) -> str:  # zset id -> due ms
        return f"{self.tag}:delayed"

    @property
    def requeue(self) -> str:  # zset id -> ready score, for ids changed while leased
        return f"{self.tag}:requeue"

    @property
    def bands(self) -> str:  # hash id -> ready score (band * 1e13 + ms) of a leased/delayed id
        return f"{self.tag}:bands"

    @property
    def state(self) -> str:  # hash: paused, blocked_until, breaker fields, limits
        return f"{self.tag}:state"

    def window(self, window_ms: int) -> str:  # hash bucket -> admitted count
        return f"{self.tag}:rl:{window_ms}"

    @property
    def conc(self) -> str:  # zset 'token|n' -> lease deadline: requests in flight (CRM model)
        return f"{self.tag}:conc"

    @property
    def stats(self) -> str:  # hash of counters for `status`
        return f"{self.tag}:stats"

    @property
    def auth(self) -> str:  # hash: the shared access token, sealed (crm/tokens.py)
        return f"{self.tag}:auth"

    @property
    def auth_lock(self) -> str:  # string: held by the one process refreshing the token
        return f"{self.tag}:authlock"

    @property
    def heal_lock(self) -> str:  # string: held by the one process healing after a Redis loss
        return f"{self.tag}:heallock"

    @property
    def checkpoint_lock(self) -> str:  # string: held by the process copying the windows to PG
        return f"{self.tag}:ckptlock"

    def all_static(self) -> list[str]:
        return [
            self.ready,
            self.leases,
            self.lease_tokens,
            self.delayed,
            self.requeue,
            self.bands,
            self.state,
        ]

    def script_keys(self) -> list[str]:
        """KEYS[1..8] of every queue script, in the order the scripts name them."""
        return [
            self.ready,
            self.leases,
            self.lease_tokens,
            self.delayed,
            self.requeue,
            self.bands,
            self.state,
            self.stats,
        ]

    def all_keys(self, window_sizes_ms: Iterable[int]) -> list[str]:
        """Every key of the connection, given the window sizes it has used."""
        windows = (self.window(ms) for ms in sorted(set(window_sizes_ms)))
        return [
            *self.script_keys(),
            *windows,
            self.conc,
            self.auth,
            self.auth_lock,
            self.heal_lock,
            self.checkpoint_lock,
        ]


def connection(connection_id: str) -> ConnectionKeys:
    return ConnectionKeys(connection_id)


def process_stats(kind: str) -> str:
    """Counters of one kind of process (``relay``, ``reconcile``): a hash the API exports."""
    return f"{PREFIX}:{{proc:{kind}}}:stats"


def crm_breaker(crm: str) -> str:
    """Per-CRM breaker state (seed design: one breaker per CRM)."""
    return f"{PREFIX}:{{crm:{crm}}}:breaker"


def wake_channel(shard: int) -> str:
    """Sharded pub/sub channel ``shard`` (0 <= shard < WAKE_SHARDS), in a slot of its own."""
    return f"{PREFIX}:{{wake:{shard}}}"


def wake_shard(connection_id: str) -> int:
    """The wake channel a connection's announcements go to: any stable spread will do."""
    return zlib.crc32(connection_id.encode()) % WAKE_SHARDS


def key_slot_tag(key: str) -> str:
    """The hash tag Redis Cluster uses to pick the key's slot."""
    start = key.find("{")
    if start >= 0:
        end = key.find("}", start + 1)
        if end > start + 1:
            return key[start + 1 : end]
    return key
