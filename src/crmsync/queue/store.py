"""Per-connection work queues in Redis, with the rate limiter and breaker inside.

Every operation on a connection is one Lua script (``queue/lua``) over keys of
one hash slot, timed by Redis ``TIME``: claiming checks pause, block, breaker
and every rate window and leases work in one atomic step, so any number of
processes on any number of hosts share one view. This module only marshals
arguments, keeps each process's copy of the connection config (so a Redis that
lost its data is restored by the next claim) and publishes wake-ups
(``queue/wake.py``). The same code runs on one Redis server and on a Redis
Cluster: a connection's keys share one hash slot, and pipelines that mix
connections (``enqueue``) are split per node by the cluster client.
"""

from __future__ import annotations

import math
import secrets
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import IntEnum
from functools import cached_property
from typing import Any

from crmsync.crm.quota import Usage
from crmsync.crm_limits import CrmSpec
from crmsync.errors import UserError
from crmsync.queue import keys
from crmsync.queue.scripts import Arg, Call, Scripts
from crmsync.queue.wake import Wakeups
from crmsync.ratelimit import (
    Prefill,
    RateWindow,
    bucket_ms,
    min_room,
    normalize,
    span_ms,
    with_pacing,
)
from crmsync.redis_client import RedisClient

BAND_SCALE = 10**13  # ready score = band * BAND_SCALE + enqueue ms
ENQUEUE_CHUNK = 5000  # ids per script call: bounded ARGV and script run time


class Band(IntEnum):
    CREATE = 0
    UPDATE = 1
    DELETE = 2


# After a CRM's 429: claim at half of every limit at once, back to the whole
# limit linearly over half a minute.
SLOW_FACTOR = 0.5
SLOW_SECONDS = 30.0
LEARN_FREED = 2  # learn.lua: the budget has room again
# What `connections resume` clears of a connection's state hash.
RESUME_CLEARS = (
    "paused",
    "blocked_until_ms",
    "blocked_reason",
    "slow_until_ms",
    "slow_ms",
    "slow_factor",
)


@dataclass(frozen=True)
class Claim:
    connection_id: str
    token: str
    ids: list[str]
    bands: list[int]
    permits: int
    admitted_ms: int  # the permits' stamp: Redis time, or earlier for a late claim
    next_eligible_ms: int | None
    probe: bool
    refused: str | None
    redis_ms: int  # Redis time when the claim ran
    seq: int = 0  # the CRM model's count of our admissions before this claim
    # Ids whose last lease expired unresolved: a worker may have died after the
    # CRM applied its send and before the ledger row (the CRM may hold a record).
    unknown: frozenset[str] = frozenset()


@dataclass(frozen=True)
class QueueDepth:
    connection_id: str
    ready: int
    leased: int
    delayed: int
    requeue: int
    paused: str | None
    blocked_until_ms: int | None
    blocked_reason: str | None
    breaker: str
    breaker_failures: int
    breaker_opened_ms: int | None
    windows: list[RateWindow]
    in_window: dict[int, int]  # window_ms -> requests admitted in the current window
    now_ms: int
    stats: dict[str, int] = field(default_factory=dict)
    state: dict[str, str] = field(default_factory=dict)  # the state hash as stored

    @property
    def budget(self) -> tuple[int, int] | None:
        """(used, max) of the CRM model's daily budget as the claim script counts it
        (every app's use learnt, plus ours since), None without a CRM model."""
        s = self.state
        kind, _, alloc = s.get("crm", "").partition(":")
        if not kind:
            return None
        most = int(s.get("bud_max") or alloc or 0)
        if kind == "daily":
            return int(s.get("day_n", 0)) + int(s.get("day_others", 0)), most
        if "bud_used" not in s:
            return 0, most
        seq = int(s.get("bud_seq", 0))
        return int(s["bud_used"]) + seq - int(s.get("bud_ref", seq)), most


@dataclass(frozen=True)
class _Config:
    windows: tuple[RateWindow, ...]
    threshold: int
    recovery_ms: int
    paused: str | None
    crm: CrmSpec | None = None

    @cached_property
    def enforced(self) -> tuple[RateWindow, ...]:
        """What the scripts enforce: the configured windows and the pacing window."""
        return with_pacing(self.windows)


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _pairs(flat: Sequence[Any]) -> dict[str, str]:
    """A hash a script returned as [field, value, ...]."""
    return {_text(k): _text(v) for k, v in zip(flat[0::2], flat[1::2], strict=True)}


def _block_args(seconds: float, *, slow: bool, reason: str = "") -> list[Arg]:
    slow_ms = math.ceil(SLOW_SECONDS * 1000) if slow else 0
    ms = max(0, math.ceil(seconds * 1000)) if math.isfinite(seconds) else 0
    return [ms, slow_ms, repr(SLOW_FACTOR), reason[:500]]


def _learn_args(crm: CrmSpec, usage: Usage, ref: int, margin: float) -> list[Arg]:
    return [
        "r" if crm.kind == "rolling" else "d",
        "" if usage.used is None else usage.used,
        "" if usage.most is None else usage.most,
        max(0, ref),
        usage.burst or "",
        crm.script_arg(int(time.time() * 1000), margin),
    ]


def _limits_spec(windows: Sequence[RateWindow]) -> str:
    return ",".join(f"{w.limit}:{w.window_ms}" for w in windows)


def _parse_limits(spec: str) -> tuple[RateWindow, ...]:
    out = []
    for part in spec.split(","):
        if part:
            limit, window_ms = part.split(":")
            out.append(RateWindow(int(limit), int(window_ms)))
    return tuple(out)


class QueueStore:
    def __init__(self, redis: RedisClient, *, margin: float = 0.04) -> None:
        self.redis = redis
        self.margin = margin
        self.scripts = Scripts(redis)
        self.wakeups = Wakeups(redis)
        self._config: dict[str, _Config] = {}

    # -- configuration ------------------------------------------------------------

    async def configure(
        self,
        connection_id: str,
        windows: Sequence[RateWindow],
        *,
        breaker_threshold: int,
        breaker_recovery_ms: int,
        paused: str | None,
        crm: CrmSpec | None = None,
    ) -> None:
        """Write limits and settings; breaker state and window counts are kept.
        ``crm``: the CRM's own limit model held beside the windows (crm_limits.py);
        it lives in this process's config only, like the windows' spans."""
        cfg = _Config(
            tuple(normalize(windows)), breaker_threshold, breaker_recovery_ms, paused, crm
        )
        self._config[connection_id] = cfg
        ck = keys.connection(connection_id)
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(
            ck.state,
            mapping={
                "limits": _limits_spec(cfg.windows),
                "br_threshold": breaker_threshold,
                "br_recovery_ms": breaker_recovery_ms,
                "margin": repr(self.margin),
            },
        )
        if paused:
            pipe.hset(ck.state, "paused", paused)
        else:
            pipe.hdel(ck.state, "paused")
        if crm is not None:  # for status: the budget before one is learnt
            pipe.hset(ck.state, "crm", f"{crm.kind}:{crm.allocation}")
        else:
            pipe.hdel(ck.state, "crm")
        await pipe.execute()

    async def _config_for(self, connection_id: str) -> _Config:
        cfg = self._config.get(connection_id)
        if cfg is not None:
            return cfg
        raw = await self.redis.hmget(
            keys.connection(connection_id).state,
            ["limits", "br_threshold", "br_recovery_ms", "paused"],
        )
        if raw[0] is None:
            raise UserError(
                f"connection {connection_id!r} has no queue configuration; "
                "add it with `crmsync connections add` and start a worker"
            )
        cfg = _Config(
            _parse_limits(_text(raw[0])),
            int(raw[1] or 5),
            int(raw[2] or 30_000),
            _text(raw[3]) if raw[3] is not None else None,
        )
        self._config[connection_id] = cfg
        return cfg

    def _window_keys(self, connection_id: str, cfg: _Config) -> list[str]:
        ck = keys.connection(connection_id)
        return [*ck.script_keys(), *(ck.window(w.window_ms) for w in cfg.enforced)]

    def _crm_keys(self, connection_id: str, cfg: _Config) -> list[str]:
        """The window keys, then the in-flight zset when the CRM model caps it."""
        ks = self._window_keys(connection_id, cfg)
        if cfg.crm is not None and cfg.crm.concurrency > 0:
            ks.append(keys.connection(connection_id).conc)
        return ks

    def _crm_arg(self, cfg: _Config) -> str:
        if cfg.crm is None:
            return ""
        return cfg.crm.script_arg(int(time.time() * 1000), self.margin)

    # -- producer -----------------------------------------------------------------

    async def enqueue(self, items: Sequence[tuple[str, str, int]]) -> set[str]:
        """Queue (connection_id, contact_id, band) items; coalesces; wakes workers.
        Returns the connections whose state carries no lineage marker (Redis lost
        it, or no worker marked it yet). A queue that lost its work gains some
        here, so its workers are woken and their claim notices the loss."""
        by_conn: dict[str, list[Arg]] = {}
        for cid, contact_id, band in items:
            by_conn.setdefault(cid, []).extend((contact_id, int(Band(band))))
        calls: list[Call] = []
        owners: list[str] = []
        for cid, args in by_conn.items():
            ks = keys.connection(cid).script_keys()
            for i in range(0, len(args), 2 * ENQUEUE_CHUNK):
                calls.append((ks, args[i : i + 2 * ENQUEUE_CHUNK]))
                owners.append(cid)
        answers = await self.scripts.call_many("enqueue", calls)
        woken: dict[str, None] = {}
        unmarked: set[str] = set()
        for cid, (added, lost) in zip(owners, answers, strict=True):
            if int(lost):
                unmarked.add(cid)
            if int(added) > 0:
                woken[cid] = None
        await self.wakeups.publish(list(woken))
        return unmarked

    # -- worker -------------------------------------------------------------------

    async def claim(
        self,
        connection_id: str,
        *,
        max_requests: int,
        batch_size: int,
        lease_ms: int,
        backdate_ms: int = 0,
        lineage: str = "",
    ) -> Claim:
        """Lease up to ``max_requests`` requests' worth of ids if the connection may
        send now. ``lineage``: the marker the connection's Redis state must carry
        ('' no check, '*' any): refused 'lost' without one, 'lineage' with another
        (``crmsync.worker.heal``). A claim later than the moment its room opened may be stamped
        that moment, at most ``backdate_ms`` ago (it then has that much less of
        the lag the margin absorbs before its sends count as late)."""
        cfg = await self._config_for(connection_id)
        token = secrets.token_hex(8)
        args: list[Arg] = [
            token,
            max(1, max_requests),
            max(1, batch_size),
            max(1, lease_ms),
            cfg.threshold,
            cfg.recovery_ms,
            _limits_spec(cfg.windows),
            cfg.paused or "",
            repr(self.margin),
            max(0, int(backdate_ms)),
            lineage,
            self._crm_arg(cfg),
        ]
        for w in cfg.enforced:
            args += [w.limit, w.window_ms, span_ms(w, self.margin), min_room(w, cfg.windows)]
        raw = await self.scripts.call("claim", self._crm_keys(connection_id, cfg), args)
        refused = _text(raw[0]) or None
        nxt = int(raw[1])
        pairs = raw[7:]
        ids = [_text(x) for x in pairs[0::2]]
        scores = [_text(s) for s in pairs[1::2]]
        return Claim(
            connection_id=connection_id,
            token=token,
            ids=ids,
            bands=[int(float(s.lstrip("?"))) // BAND_SCALE for s in scores],
            permits=int(raw[3]),
            admitted_ms=int(raw[2]),
            next_eligible_ms=nxt if nxt >= 0 else None,
            probe=bool(int(raw[4])),
            refused=refused,
            redis_ms=int(raw[5]),
            seq=int(raw[6]),
            unknown=frozenset(i for i, s in zip(ids, scores, strict=True) if s.startswith("?")),
        )

    async def ack(self, claim: Claim, ids: Sequence[str], *, refund: int = 0) -> None:
        """Finish leased ids; give back ``refund`` permits that were never sent."""
        await self.finish(claim, ack=ids, refund=refund)

    async def readmit(self, claim: Claim, wanted: int, lineage: str = "") -> Claim:
        """Give back the claim's permits and take up to ``wanted`` at Redis time now.

        For a claim whose sends were delayed after admission (a slow database
        read, a busy event loop): the returned claim's ``permits`` and
        ``admitted_ms`` describe the new admission; send at most ``permits``.
        """
        granted, at = await self._swap(
            claim.connection_id, claim.permits, claim.admitted_ms, wanted, lineage
        )
        return replace(claim, permits=granted, admitted_ms=at)

    async def take(self, connection_id: str, wanted: int = 1, lineage: str = "") -> tuple[int, int]:
        """Take up to ``wanted`` permits at Redis time now, outside any claim (a
        follow-up request of a send); (granted, Redis time ms)."""
        return await self._swap(connection_id, 0, 0, wanted, lineage)

    async def retake(
        self, connection_id: str, admitted_ms: int, n: int = 1, lineage: str = ""
    ) -> tuple[int, int]:
        """Give back ``n`` permits taken at ``admitted_ms`` and take up to ``n`` at
        Redis time now, with room (requests held back after their claim, so their
        permits must stand for when they go out); (granted, Redis time ms)."""
        return await self._swap(connection_id, n, admitted_ms, n, lineage)

    async def _swap(
        self, connection_id: str, give: int, admitted_ms: int, wanted: int, lineage: str = ""
    ) -> tuple[int, int]:
        """``readmit.lua``: give ``give`` permits back to their bucket at
        ``admitted_ms``, take up to ``wanted`` now; (granted, Redis time ms).
        ``lineage`` as for a claim: a state without it grants nothing."""
        cfg = await self._config_for(connection_id)
        args: list[Arg] = [give, admitted_ms, max(0, wanted), self._crm_arg(cfg)]
        for w in cfg.enforced:
            args += [w.limit, w.window_ms, span_ms(w, self.margin)]
        args.append(lineage)
        raw = await self.scripts.call("readmit", self._window_keys(connection_id, cfg), args)
        return int(raw[0]), int(raw[1])

    async def restamp(self, connection_id: str, admitted_ms: int, n: int = 1) -> int:
        """Move ``n`` permits taken at ``admitted_ms`` to Redis time now (the time
        their request was written, when that was later than the admission); returns
        the new stamp. Needs no room: see ``restamp.lua``."""
        cfg = await self._config_for(connection_id)
        args: list[Arg] = [n, admitted_ms]
        for w in cfg.enforced:
            args += [w.window_ms, span_ms(w, self.margin)]
        raw = await self.scripts.call("restamp", self._window_keys(connection_id, cfg), args)
        return int(raw)

    async def finish(
        self,
        claim: Claim,
        *,
        ack: Sequence[str] = (),
        refund: int = 0,
        retry: Mapping[str, float] | None = None,
        release: Sequence[str] = (),
        outcomes: Sequence[bool] = (),
        counters: Mapping[str, int] | None = None,
        block: float = 0.0,
        block_reason: str = "",
        learnt: Usage | None = None,
    ) -> str | None:
        """Everything a processed claim hands back, in one pipelined round trip:
        a block the CRM's quota headers asked for (``block`` seconds, as
        ``block()`` without slowing, ``block_reason`` shown in status), ack (with
        refund), retry, release, breaker report and counters, in that order.
        ``ack``, ``retry_later``, ``release`` and ``report`` are this with one
        part; the config is read only for the parts that need it. Returns the
        connection's breaker state after the report (None: no report; "opened":
        this report opened it)."""
        cid = claim.connection_id
        ck = keys.connection(cid)
        ks = ck.script_keys()
        refund = max(0, min(refund, claim.permits))
        calls: list[tuple[str, Sequence[str], list[Arg]]] = []
        cfg = self._config.get(cid)
        capped = cfg is not None and cfg.crm is not None and cfg.crm.concurrency > 0
        if learnt is not None and cfg is not None and cfg.crm is not None:
            # First: the budget is what the CRM said before anything else runs.
            calls.append(("learn", ks, _learn_args(cfg.crm, learnt, claim.seq + 1, self.margin)))
        if block > 0:  # first: the ids released below must find the connection held
            calls.append(("block", ks, _block_args(block, slow=False, reason=block_reason)))
        if ack or refund or (capped and claim.permits):
            cfg = await self._config_for(cid)
            args: list[Arg] = [claim.token, refund, claim.admitted_ms, len(cfg.enforced)]
            args += [w.window_ms for w in cfg.enforced]
            args.append(1 if capped else 0)
            calls.append(("ack", self._crm_keys(cid, cfg), [*args, *ack]))
        if retry:
            rargs: list[Arg] = [claim.token]
            for contact_id, seconds in retry.items():
                rargs += [contact_id, max(0, math.ceil(seconds * 1000))]
            calls.append(("retry", ks, rargs))
        if release:
            calls.append(("release", ks, [claim.token, *release]))
        if outcomes:
            threshold = (await self._config_for(cid)).threshold
            flags = "".join("1" if ok else "0" for ok in outcomes)
            calls.append(("report", ks, [claim.token, threshold, flags]))
        results = await self.scripts.call_mixed(
            calls, extra=[("HINCRBY", ck.stats, f, n) for f, n in (counters or {}).items() if n]
        )
        wake = False
        breaker: str | None = None
        for (name, _, _), res in zip(calls, results, strict=True):
            if name == "report":
                breaker = _text(res)
                wake = wake or (claim.probe and breaker == "closed")
            elif name == "learn":
                wake = wake or int(res) == LEARN_FREED
            elif name != "block":
                wake = wake or int(res) > 0
        if wake:
            await self.wakeups.publish([cid])
        return breaker

    async def retry_later(self, claim: Claim, delays: Mapping[str, float]) -> None:
        """Leased ids wait ``delays[id]`` seconds in ``delayed``, band kept."""
        await self.finish(claim, retry=delays)

    async def release(self, claim: Claim, ids: Sequence[str]) -> None:
        """Back to ready with band and age; not an attempt."""
        await self.finish(claim, release=ids)

    async def renew(self, claim: Claim, ids: Sequence[str], lease_ms: int) -> None:
        if not ids:
            return
        ck = keys.connection(claim.connection_id)
        ks = ck.script_keys()
        cfg = self._config.get(claim.connection_id)
        if cfg is not None and cfg.crm is not None and cfg.crm.concurrency > 0:
            ks = [*ks, ck.conc]
        await self.scripts.call("renew", ks, [claim.token, max(1, lease_ms), *ids])

    async def learn(self, connection_id: str, usage: Usage, ref: int | None = None) -> bool:
        """What a CRM said of its daily budget outside a claim's answers (``/limits``):
        ``ref`` our admissions before it was asked, None for now less those still
        in flight. True when it changed the budget."""
        cfg = await self._config_for(connection_id)
        if cfg.crm is None:
            return False
        ck = keys.connection(connection_id)
        ks = ck.script_keys()
        if cfg.crm.concurrency > 0:
            ks = [*ks, ck.conc]
        args = _learn_args(cfg.crm, usage, -1 if ref is None else ref, self.margin)
        if ref is None:
            args[3] = ""
        res = int(await self.scripts.call("learn", ks, args))
        if res == LEARN_FREED:  # claims refused for the budget may go now
            await self.wakeups.publish([connection_id])
        return res > 0

    async def report(self, claim: Claim, outcomes: Sequence[bool]) -> None:
        """Breaker input, one per request: True answered, False 5xx/timeout/connection.
        The others wait for a probe's verdict: a probe that closes the breaker wakes them."""
        await self.finish(claim, outcomes=outcomes)

    async def block(
        self, connection_id: str, seconds: float, *, slow: bool = False, reason: str = ""
    ) -> None:
        """Hold the connection back for every worker for ``seconds`` (``reason``:
        the CRM's words, shown in status). ``slow`` (a CRM's 429: its view of the
        limit differs, e.g. other apps share the quota): claims then also run at
        ``SLOW_FACTOR`` of every limit, growing back to the whole limit over
        ``SLOW_SECONDS``."""
        ks = keys.connection(connection_id).script_keys()
        await self.scripts.call("block", ks, _block_args(seconds, slow=slow, reason=reason))

    async def pause(self, connection_id: str, reason: str) -> None:
        reason = reason or "paused"
        cfg = self._config.get(connection_id)
        if cfg is not None:
            self._config[connection_id] = replace(cfg, paused=reason)
        await self.redis.hset(keys.connection(connection_id).state, "paused", reason)

    async def resume(self, connection_id: str) -> None:
        """Send again: not paused, and not blocked or slowed by a CRM's answer
        (an operator's word overrides a wait a CRM asked for)."""
        cfg = self._config.get(connection_id)
        if cfg is not None:
            self._config[connection_id] = replace(cfg, paused=None)
        await self.redis.hdel(keys.connection(connection_id).state, *RESUME_CLEARS)
        await self.wakeups.publish([connection_id])

    # -- Redis loss -----------------------------------------------------------------

    async def enforced_windows(self, connection_id: str) -> tuple[RateWindow, ...]:
        """The windows the scripts enforce for the connection (pacing included)."""
        return (await self._config_for(connection_id)).enforced

    async def heal(self, connection_id: str, lineage: str, fills: Sequence[Prefill]) -> int:
        """Rebuild the connection's windows as ``fills`` say and mark its state
        with ``lineage`` (claims pass again); Redis time ms. ``fills`` covers
        every enforced window, in order."""
        ck = keys.connection(connection_id)
        args: list[Arg] = [lineage]
        for f in fills:
            spec = ",".join(f"{i}:{n}" for i, n in sorted(f.buckets.items()))
            args += [f.window.window_ms, span_ms(f.window, self.margin), f.fill, spec]
        wkeys = [ck.window(f.window.window_ms) for f in fills]
        return int(await self.scripts.call("heal", [*ck.script_keys(), *wkeys], args))

    async def lineage(self, connection_id: str) -> str | None:
        """The connection's marker; None when there is none, or it was written on
        another cluster node (the slot failed over or moved: counted as lost)."""
        return (await self.markers([connection_id]))[0]

    async def markers(self, connection_ids: Sequence[str]) -> list[str | None]:
        """``lineage`` of each connection, in one round trip per node."""
        calls: list[Call] = [(keys.connection(c).script_keys(), []) for c in connection_ids]
        answers = await self.scripts.call_many("snapshot", calls) if calls else []
        return [_text(a[0]) or None for a in answers]

    async def mark(self, connection_id: str, lineage: str) -> str:
        """Mark the connection's state with ``lineage`` unless it carries a marker
        (stamped with the node that holds it); the marker it carries now."""
        ks = keys.connection(connection_id).script_keys()
        return _text(await self.scripts.call("mark", ks, [lineage]))

    async def snapshot(
        self, connection_id: str, window_sizes_ms: Sequence[int]
    ) -> tuple[str | None, int, dict[int, dict[int, int]]]:
        """(lineage marker, Redis time ms, window_ms -> {bucket index: count}) of
        the given windows, in one script call."""
        ck = keys.connection(connection_id)
        wkeys = [ck.window(ms) for ms in window_sizes_ms]
        raw = await self.scripts.call("snapshot", [*ck.script_keys(), *wkeys], [])
        marker = _text(raw[0]) or None
        out: dict[int, dict[int, int]] = {}
        for ms, flat in zip(window_sizes_ms, raw[2:], strict=True):
            out[ms] = {int(k): int(v) for k, v in _pairs(flat).items() if k.lstrip("-").isdigit()}
        return marker, int(raw[1]), out

    # -- operators ----------------------------------------------------------------

    async def _known_windows(self, connection_id: str) -> tuple[RateWindow, ...]:
        cfg = self._config.get(connection_id)
        if cfg is not None:
            return cfg.windows
        spec = await self.redis.hget(keys.connection(connection_id).state, "limits")
        return _parse_limits(_text(spec)) if spec is not None else ()

    async def depth(self, connection_id: str) -> QueueDepth:
        ck = keys.connection(connection_id)
        windows = await self._known_windows(connection_id)
        window_keys = [ck.window(w.window_ms) for w in windows]
        raw = await self.scripts.call("depth", [*ck.script_keys(), *window_keys], [])
        ready, leased, delayed, requeue, now_raw, state_flat, stats_flat, *wins = raw
        now = int(now_raw)
        state = _pairs(state_flat)
        in_window: dict[int, int] = {}
        for w, buckets in zip(windows, wins, strict=True):
            floor = (now - span_ms(w, self.margin)) // bucket_ms(w)
            in_window[w.window_ms] = sum(
                int(n)
                for idx, n in _pairs(buckets).items()
                if idx.lstrip("-").isdigit() and int(idx) >= floor
            )
        blocked = int(state.get("blocked_until_ms", "0"))
        opened = int(state.get("br_opened_ms", "0"))
        return QueueDepth(
            connection_id=connection_id,
            ready=int(ready),
            leased=int(leased),
            delayed=int(delayed),
            requeue=int(requeue),
            paused=state.get("paused"),
            blocked_until_ms=blocked if blocked > now else None,
            blocked_reason=state.get("blocked_reason") if blocked > now else None,
            breaker=state.get("br_state", "closed"),
            breaker_failures=int(state.get("br_failures", "0")),
            breaker_opened_ms=opened or None,
            windows=list(windows),
            in_window=in_window,
            now_ms=now,
            stats={k: int(v) for k, v in _pairs(stats_flat).items()},
            state=state,
        )

    async def drop(self, connection_id: str) -> None:
        """Delete every key of the connection (its queue, limiter and breaker)."""
        windows = await self._known_windows(connection_id)
        self._config.pop(connection_id, None)
        await self.redis.delete(
            *keys.connection(connection_id).all_keys(w.window_ms for w in with_pacing(windows))
        )
