"""The access token a connection's requests carry: static, or refreshed and shared.

``StaticToken`` is a bearer token as given (a 401 with it pauses the connection).

``SharedToken`` (oauth-refresh, jwt) is one access token per connection for every
process, kept in Redis (``keys.connection(id).auth``, sealed with the connection's
vault key) with its generation, issue time and expiry:

- A process uses its copy while it is valid. Close to a known expiry (HubSpot's
  ``expires_in``, Salesforce's ``token_max_age_seconds`` setting) it refreshes in
  the background while requests go on with the current token.
- Refreshing takes the connection's lock (``SET NX PX``): the one winner calls the
  token endpoint and publishes the new token (``lua/token.lua``, which also counts
  ``token_refreshes``); the others poll the hash until it changes, bounded by the
  HTTP timeout, instead of calling the endpoint themselves.
- A 401 with a token that is no longer the current one raises ``TokenReplaced``
  (the request goes back, not an attempt). A 401 with the current token means it
  expired or was revoked: it is condemned, the request goes back and the next one
  refreshes. Only a 401 with a fresh token, one refreshed because the previous
  one was refused that has not served a request yet (issued within ``FRESH_S``),
  raises ``AuthFailed``, and a refusal of the token endpoint ``TokenRefused``:
  both pause the connection with the CRM's reason.
- A refresh token the endpoint rotates is shared in the same sealed value and
  handed to ``on_rotated`` (which stores it sealed in PostgreSQL).

Tokens from other credentials (``rev``, new with every `connections add/update`)
are ignored, so changed credentials never use a token of the old ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets as pysecrets
from collections.abc import Awaitable, Callable, Mapping
from importlib import resources
from typing import TYPE_CHECKING, Any, NoReturn

import aiohttp
import structlog

from crmsync import clock, redact
from crmsync.crm import auth as authflow
from crmsync.crm.credentials import Credential, StaticToken, TokenSource
from crmsync.crm.http import timeout_from
from crmsync.errors import AuthFailed, Retryable, TokenRefused, TokenReplaced
from crmsync.queue import keys
from crmsync.redis_client import RedisClient
from crmsync.vault import Keyring, SecretsError

if TYPE_CHECKING:
    from crmsync.connections import Connection

log = structlog.get_logger(__name__)

POLL_S = 0.025  # how often a process waiting for another's refresh looks again
LOCK_EXTRA_S = 5.0  # the lock outlives the endpoint's HTTP timeout by this much
FRESH_S = 60.0  # a token that never served a request, younger than this, is "fresh"
EARLY_SHARE = 0.2  # refresh ahead of a known expiry by this share of the lifetime...
EARLY_CAP_S = 60.0  # ...but at most this many seconds ahead
EXPIRY_SLACK_S = 0.5  # a token this close to its expiry is not sent any more
KICK_EVERY_S = 0.5  # a process looks for a background refresh at most this often
# A refusal of these credentials this recent answers for the endpoint: the
# connection is being paused, and asking again would only be refused again.
REFUSAL_HOLDS_S = 5.0

RotatedHook = Callable[[str], Awaitable[None]]


_LUA = (resources.files("crmsync.crm") / "lua" / "token.lua").read_text(encoding="utf-8")


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class SharedToken:
    """The refreshing token of one connection in one process (see the module)."""

    refreshes = True

    def __init__(
        self,
        connection_id: str,
        crm: str,
        auth: authflow.Auth,
        secrets: Mapping[str, str],
        base_url: str,
        *,
        redis: RedisClient,
        keyring: Keyring,
        session: aiohttp.ClientSession,
        timeout_s: float,
        max_age_s: float | None = None,
        on_rotated: RotatedHook | None = None,
        now: Callable[[], float] = clock.now,
    ) -> None:
        self.connection_id = connection_id
        self.crm = crm
        self.auth = auth
        self.secrets = dict(secrets)  # the registry updates it when the refresh token rotates
        self.rev = auth.rev
        self.base_url = base_url
        self.redis = redis
        self.keyring = keyring
        self.session = session
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self.wait_s = timeout_s + LOCK_EXTRA_S
        self.max_age_s = max_age_s
        self.on_rotated = on_rotated
        self.now = now
        self.k = keys.connection(connection_id)
        self.current: Credential | None = None
        self.bad: str | None = None  # the token a 401 condemned (expired)
        self.proven: str | None = None  # fingerprint of the last token that served a request
        self.refresh_token: str | None = None  # the newest refresh token seen (rotated)
        self._lock = asyncio.Lock()
        self._kicked = -KICK_EVERY_S
        self._tasks: set[asyncio.Task[None]] = set()
        self._script = redis.register_script(_LUA)
        self._aad = f"{connection_id}#access"  # a sealed token opens only as this one's
        redact.remember(self.secrets.values())

    # -- what requests ask ---------------------------------------------------------

    def _usable(self, c: Credential, now: float) -> bool:
        return c.token != self.bad and (c.expires is None or c.expires > now + EXPIRY_SLACK_S)

    def _due(self, c: Credential, now: float) -> bool:
        if c.expires is None:
            return False
        early = min(EARLY_CAP_S, max(0.0, c.expires - c.issued) * EARLY_SHARE)
        return now >= c.expires - early

    def cached(self) -> Credential | None:
        c, now = self.current, self.now()
        if c is not None and self._usable(c, now) and not self._due(c, now):
            return c
        return None

    async def get(self) -> Credential:
        c, now = self.current, self.now()
        if c is not None and self._usable(c, now):
            if self._due(c, now):
                self._kick()
            return c
        async with self._lock:
            c = self.current
            if c is not None and self._usable(c, self.now()):
                return c
            self.current = await self._obtain()
            return self.current

    async def ready(self) -> bool:
        c, now = self.current, self.now()
        if c is not None and self._usable(c, now):
            if self._due(c, now):
                self._kick()
            return False
        await self.get()
        return True

    def succeeded(self, cred: Credential) -> None:
        fp = cred.fingerprint()
        if self.proven == fp:
            return
        self.proven = fp
        # Other processes learn that this token works: their 401 with it is an expiry.
        self._spawn(self._mark_ok(cred))

    async def rejected(self, cred: Credential, error: AuthFailed) -> NoReturn:
        c = self.current
        if c is not None and c.token != cred.token and self._usable(c, self.now()):
            raise TokenReplaced("the access token was replaced: sent again with the new one")
        state = await self._read()
        shared = self._shared(state)
        if shared is not None and shared.token != cred.token and self._usable(shared, self.now()):
            self.current = shared
            raise TokenReplaced("the access token was replaced: sent again with the new one")
        fp = cred.fingerprint()
        served = self.proven == fp or state.get("ok") == fp
        after_401 = (
            shared is not None and shared.token == cred.token and state.get("cause") == "401"
        )
        if after_401 and not served and self.now() - cred.issued < FRESH_S:
            raise error  # a new token refused as well: the credentials do not work
        self.bad = cred.token
        if self.current is not None and self.current.token == cred.token:
            self.current = None
        raise TokenReplaced("the access token expired: sent again with a new one")

    # -- Redis -----------------------------------------------------------------------

    async def _read(self) -> dict[str, str]:
        raw = await self.redis.hgetall(self.k.auth)
        return {_text(k): _text(v) for k, v in raw.items()}

    def _shared(self, state: Mapping[str, str]) -> Credential | None:
        """The token the hash holds, if it comes from these credentials."""
        if state.get("rev") != self.rev or not state.get("sealed"):
            return None
        try:
            opened = self.keyring.open(self._aad, state["sealed"])
        except SecretsError:
            return None  # sealed under a key this process does not hold: refresh
        redact.remember(opened.values())
        if opened.get("refresh_token"):
            self.refresh_token = opened["refresh_token"]
        expires = int(state.get("expires_ms") or 0)
        return Credential(
            token=opened.get("token", ""),
            base_url=opened.get("instance_url") or None,
            gen=int(state.get("gen") or 0),
            issued=int(state.get("issued_ms") or 0) / 1000.0,
            expires=expires / 1000.0 if expires else None,
        )

    async def _mark_ok(self, cred: Credential) -> None:
        await self.redis.hset(self.k.auth, "ok", cred.fingerprint())

    # -- refreshing -------------------------------------------------------------------

    async def _obtain(self) -> Credential:
        """The shared token when it is usable; else refresh it, or wait for the
        process that does (see the module)."""
        deadline = clock.monotonic() + self.wait_s
        fails_seen: int | None = None
        while True:
            state = await self._read()
            shared = self._shared(state)
            if shared is not None and self._usable(shared, self.now()):
                return shared
            fails = int(state.get("fails") or 0)
            mine = state.get("failed_rev") == self.rev
            recent = self.now() - int(state.get("failed_ms") or 0) / 1000 < REFUSAL_HOLDS_S
            if mine and (recent if fails_seen is None else fails > fails_seen):
                raise TokenRefused(
                    state.get("failed", "the token endpoint refused the credentials"),
                    status=int(state.get("failed_status") or 400),
                    code=state.get("failed_code") or None,
                )
            if fails_seen is None:
                fails_seen = fails
            me = pysecrets.token_hex(8)
            if await self.redis.set(self.k.auth_lock, me, nx=True, px=int(self.wait_s * 1000)):
                refused = shared is not None and shared.token == self.bad
                return await self._refresh(me, early=False, after_401=refused)
            if clock.monotonic() > deadline:
                raise Retryable(
                    f"connection {self.connection_id}: another process's token refresh "
                    f"did not finish within {self.wait_s:g}s",
                    code="TOKEN_WAIT",
                )
            await asyncio.sleep(POLL_S)

    async def _refresh(self, me: str, *, early: bool, after_401: bool = False) -> Credential:
        """Holding the lock: call the token endpoint, publish what it says
        (``early``: ahead of the current token's expiry; ``after_401``: because
        the CRM refused the current one)."""
        keys_ = [self.k.auth, self.k.auth_lock, self.k.stats]
        try:
            # A refresher may have published between our read and our lock.
            shared = self._shared(await self._read())
            now = self.now()
            if (
                shared is not None
                and self._usable(shared, now)
                and not (early and self._due(shared, now))
            ):
                await self._script(keys=keys_, args=["release", me])
                return shared
            now = self.now()
            grant = await authflow.request_token(
                self.session,
                self.crm,
                self.auth,
                self.secrets,
                self.base_url,
                limit=self.timeout,
                now=now,
                refresh_token=self.refresh_token,
            )
        except TokenRefused as exc:
            status, when = str(exc.status or 400), str(int(self.now() * 1000))
            args = ["fail", me, exc.message, self.rev, exc.code or "", status, when]
            with contextlib.suppress(Exception):
                await self._script(keys=keys_, args=args)
            raise
        except BaseException:
            with contextlib.suppress(Exception):
                await asyncio.shield(self._script(keys=keys_, args=["release", me]))
            raise
        refresh = grant.refresh_token or self.refresh_token
        redact.remember([grant.access_token, refresh])
        life = grant.expires_in
        if self.max_age_s and (life is None or self.max_age_s < life):
            life = self.max_age_s
        cred = Credential(
            token=grant.access_token,
            base_url=grant.instance_url,
            issued=now,
            expires=now + life if life else None,
        )
        sealed = self.keyring.seal(
            self._aad,
            {
                "token": grant.access_token,
                "instance_url": grant.instance_url or "",
                "refresh_token": refresh or "",
            },
        )
        expires_ms = int(cred.expires * 1000) if cred.expires else 0
        cause = "401" if after_401 else ""
        args = ["ok", me, sealed, self.rev, str(int(now * 1000)), str(expires_ms), cause]
        gen = int(await self._script(keys=keys_, args=args))
        log.info("token.refreshed", connection=self.connection_id, gen=gen, expires_in=life)
        if grant.refresh_token:
            self.refresh_token = grant.refresh_token
            if self.on_rotated is not None:
                await self.on_rotated(grant.refresh_token)
        return Credential(cred.token, cred.base_url, gen, cred.issued, cred.expires)

    def _kick(self) -> None:
        """Near a known expiry: refresh in the background (one process wins the
        lock; the others pick the new token up from Redis)."""
        t = clock.monotonic()
        if t - self._kicked < KICK_EVERY_S:
            return
        self._kicked = t
        self._spawn(self._early())

    async def _early(self) -> None:
        shared = self._shared(await self._read())
        now = self.now()
        if shared is not None and self._usable(shared, now) and not self._due(shared, now):
            self.current = shared  # another process refreshed already
            return
        me = pysecrets.token_hex(8)
        if await self.redis.set(self.k.auth_lock, me, nx=True, px=int(self.wait_s * 1000)):
            self.current = await self._refresh(me, early=True)

    def _spawn(self, work: Awaitable[None]) -> None:
        async def guarded() -> None:
            try:
                await work
            except Exception as exc:  # best effort: a request refreshes on its own
                cid = self.connection_id
                log.warning("token.background_failed", connection=cid, error=str(exc))

        task = asyncio.get_running_loop().create_task(guarded())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def timeout_of(settings: Mapping[str, Any], default: float = 10.0) -> float:
    """Seconds a token endpoint call may take: the connection's ``timeout_seconds``."""
    return float(timeout_from(settings, default).total or default)


def max_age(settings: Mapping[str, Any]) -> float | None:
    """The ``token_max_age_seconds`` setting (as loaded: unchecked), or None."""
    try:
        age = float(settings.get("token_max_age_seconds") or 0)
    except (TypeError, ValueError):
        return None
    return age if age > 0 else None


def for_connection(
    conn: Connection,
    *,
    redis: RedisClient,
    keyring: Keyring,
    session: aiohttp.ClientSession,
    timeout_s: float,
    on_rotated: RotatedHook | None = None,
) -> TokenSource:
    """The token source of a connection: static for ``bearer``, else shared."""
    if not conn.auth.refreshes:
        return StaticToken(conn.token)
    return SharedToken(
        conn.id,
        conn.crm,
        conn.auth,
        conn.secrets,
        conn.base_url,
        redis=redis,
        keyring=keyring,
        session=session,
        timeout_s=timeout_s,
        max_age_s=max_age(conn.settings),
        on_rotated=on_rotated,
    )
