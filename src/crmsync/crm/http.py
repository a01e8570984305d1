"""One HTTP exchange with a CRM, on the process's shared aiohttp session.

``call`` sends one request and maps "no answer" (timeout, reset, refused) onto
``Retryable``. What comes back is bounded: the body is read up to a cap
(``CRMSYNC_MAX_BODY_BYTES``) and a longer one is a ``Malformed`` answer, its
connection closed rather than read to the end; a redirect is not followed (a
CRM that moved, or a wrong base URL) but is a ``Malformed`` answer naming its
``Location``; and the request timeout covers the whole exchange, a body that
trickles in included.

The write watch: the rate limiter counts sends as the CRM counts arrivals, so a
request written late must have its permit moved to the moment it went out, and
every request the CRM counts must have had a permit. The worker hands a
``WriteWatch`` to ``CrmAdapter.send``; the adapter passes it to every ``call``
of that send. ``call`` tells it when the first request is written (its body's
bytes reach the socket, after the headers are built and a connection is taken,
so a stall anywhere before the write is seen) and awaits its ``extra_permit``
before every further request of the same send. Without a watch (no limits, a
check from the CLI) nothing is reported and nothing waits.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
from yarl import URL

from crmsync.crm.answer import clean, loads, message, obj, seq
from crmsync.crm.credentials import Credential, StaticToken, TokenSource
from crmsync.crm.quota import MAX_BLOCK_SECONDS, Usage
from crmsync.errors import AuthFailed, Malformed, Retryable

Headers = Mapping[str, str]
DEFAULT_MAX_BODY_BYTES = 8 * 1024 * 1024


def http_session(concurrency: int, timeout: float) -> aiohttp.ClientSession:
    """One pooled HTTP session per process, sized to the number of sends in flight."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=concurrency + 16, ttl_dns_cache=300),
        timeout=aiohttp.ClientTimeout(total=timeout),
        json_serialize=lambda o: orjson.dumps(o).decode(),
    )


def base_of(url: str) -> str:
    """A connection's base URL, percent-encoded once (every path and query part the
    adapters add is quoted by them), so requests skip yarl's encoding pass."""
    return str(URL(url)).rstrip("/")


def timeout_from(settings: Mapping[str, Any], default: float = 10.0) -> aiohttp.ClientTimeout:
    try:
        seconds = float(settings.get("timeout_seconds", default))
    except (TypeError, ValueError):
        seconds = default
    return aiohttp.ClientTimeout(total=seconds if seconds > 0 else default)


async def call(
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    *,
    headers: Mapping[str, str],
    body: bytes | None,
    limit: aiohttp.ClientTimeout,
    watch: WriteWatch | None = None,
    max_body: int = DEFAULT_MAX_BODY_BYTES,
) -> tuple[int, Headers, bytes]:
    """One HTTP exchange; no answer at all (timeout, reset, refused) is Retryable;
    a redirect or a body over ``max_body`` bytes is Malformed.

    ``watch`` is told when its first request is written: by the body as it goes
    out, or now for a request without one (its headers go out within this call,
    waiting on nothing but a pooled connection). A further request on the same
    watch first awaits its extra permit."""
    data: bytes | WatchedBody | None = body
    if watch is not None:
        watch.calls += 1
        if not watch.started:
            watch.started = True
            if body is None:
                watch.fire()
            else:
                data = WatchedBody(body, watch, headers.get("Content-Type", "application/json"))
        elif watch.extra_permit is not None:
            await watch.extra_permit()
    try:
        target = URL(url, encoded=True)  # built from base_of() and quoted parts
        async with session.request(
            method, target, data=data, headers=headers, timeout=limit, allow_redirects=False
        ) as resp:
            if 300 <= resp.status < 400:
                resp.close()
                where = clean(resp.headers.get("Location") or "nowhere", 200)
                raise Malformed(
                    f"answered {resp.status} redirecting to {where}: redirects are not "
                    "followed; check the connection's base URL",
                    status=resp.status,
                    code="REDIRECT",
                )
            return resp.status, resp.headers, await read_capped(resp, max_body)
    except TimeoutError as exc:
        message = f"no answer within {limit.total}s: {method} {url}"
        raise Retryable(message, code="TIMEOUT") from exc
    except aiohttp.ClientError as exc:
        detail = str(exc) or type(exc).__name__
        raise Retryable(f"connection failed: {detail}", code="CONNECTION") from exc


async def read_capped(resp: aiohttp.ClientResponse, cap: int) -> bytes:
    """The body, or Malformed as soon as it is known to be over ``cap`` bytes (the
    connection is then closed, not left half-read for the next request)."""
    declared = resp.content_length
    if declared is not None and declared > cap:
        resp.close()
        raise _too_large(resp.status, cap, f"it declares {declared}")
    body = bytearray()
    async for chunk in resp.content.iter_any():
        body += chunk
        if len(body) > cap:
            resp.close()
            raise _too_large(resp.status, cap, "more came")
    return bytes(body)


def _too_large(status: int, cap: int, detail: str) -> Malformed:
    return Malformed(
        f"answered {status} with a body over the {cap}-byte cap ({detail}); "
        "CRMSYNC_MAX_BODY_BYTES sets the cap",
        status=status,
        code="BODY_TOO_LARGE",
    )


@dataclass(slots=True)
class WriteWatch:
    """What a sender wants to hear from ``call`` about the requests of one send.

    ``on_write`` is told once, when the first request is written (the moment the
    CRM starts counting it). ``extra_permit`` is awaited before every further
    request of the same send (a follow-up such as HubSpot's update after a 409),
    so each request the CRM counts had a permit of the limiter."""

    on_write: Callable[[], None]
    extra_permit: Callable[[], Awaitable[None]] | None = None
    started: bool = False
    fired: bool = False
    calls: int = 0  # HTTP requests of the send so far (each one the CRM counts)
    usage: Usage | None = None  # what the last answer said of the CRM's budget

    def fire(self) -> None:
        if not self.fired:
            self.fired = True
            self.on_write()


class WatchedBody(aiohttp.BytesPayload):
    """A request body that fires its watch as its bytes are handed to the socket:
    after the headers are built and the connection is taken, so a stall anywhere
    before the write (a busy loop, a descheduled process) is seen."""

    def __init__(self, value: bytes, watch: WriteWatch, content_type: str) -> None:
        super().__init__(value, content_type=content_type)
        self._watch = watch

    async def write(self, writer: Any) -> None:
        self._watch.fire()
        await super().write(writer)

    async def write_with_length(self, writer: Any, content_length: int | None) -> None:
        # aiohttp >= 3.12 writes through this; older versions through ``write``.
        self._watch.fire()
        await super().write_with_length(writer, content_length)


class JsonClient:
    """One JSON exchange with a CRM on the process's shared session, authorized by
    the connection's token source: a refreshing source hears of every 401 (which
    it turns into ``TokenReplaced`` or ``AuthFailed``) and success, and may move
    the calls to another host (Salesforce's ``instance_url``)."""

    def __init__(
        self,
        *,
        token: str | TokenSource,
        settings: Mapping[str, Any],
        session: aiohttp.ClientSession,
        base_url: str = "",
    ) -> None:
        self.session = session
        self.timeout = timeout_from(settings)
        self.max_body = int(_positive(settings.get("max_body_bytes"), DEFAULT_MAX_BODY_BYTES))
        self.max_block = _positive(settings.get("max_block_seconds"), MAX_BLOCK_SECONDS)
        # Only the CRM's own limit model learns the budget from the answers' headers.
        self.learns = settings.get("limit_model") == "crm"
        self.auth: TokenSource = StaticToken(token) if isinstance(token, str) else token
        self.base = base_of(base_url) if base_url else ""
        self._cred: Credential | None = None
        self.headers: dict[str, str] = {}
        first = self.auth.cached()
        if first is not None:  # a static token: its headers once and for all
            self._headers_for(first)

    async def ready(self) -> bool:
        """Wait until a token can be sent (a refresh under way); True if that waited."""
        return await self.auth.ready()

    def _headers_for(self, cred: Credential) -> dict[str, str]:
        if cred is not self._cred:  # built once per token, not per request
            self._cred = cred
            self.headers = {
                "Authorization": f"Bearer {cred.token}",
                "Content-Type": "application/json",
                "Accept": "application/json",
            }
        return self.headers

    async def _call(
        self, method: str, url: str, payload: Any = None, watch: WriteWatch | None = None
    ) -> tuple[int, Headers, Any]:
        body = None if payload is None else dumps(payload)
        cred = self.auth.cached() or await self.auth.get()
        if cred.base_url and self.base and url.startswith(self.base):
            url = base_of(cred.base_url) + url[len(self.base) :]
        status, headers, raw = await call(
            self.session,
            method,
            url,
            headers=self._headers_for(cred),
            body=body,
            limit=self.timeout,
            watch=watch,
            max_body=self.max_body,
        )
        data = loads(raw)
        if watch is not None and self.learns:
            watch.usage = self.read_usage(headers) or watch.usage
        if self.auth.refreshes:
            if status == 401:
                await self.auth.rejected(cred, auth_error(status, data))
            elif status < 400:
                self.auth.succeeded(cred)
        return status, headers, data

    def read_usage(self, headers: Headers) -> Usage | None:
        """What an answer's headers say of the CRM's budget (each adapter reads its own)."""
        return None

    async def request(
        self, method: str, url: str, payload: Any = None, watch: WriteWatch | None = None
    ) -> tuple[int, Headers, Any]:
        """One exchange outside an adapter's send (onboarding checks)."""
        return await self._call(method, url, payload, watch)

    def __repr__(self) -> str:
        # The headers hold the bearer token: never in a repr, a log or a traceback.
        return f"<{type(self).__name__}>"


def auth_error(status: int, body: Any) -> AuthFailed:
    """A CRM's 401 as ``AuthFailed`` with its code and message: Salesforce's
    ``[{"errorCode", "message"}]`` or HubSpot's ``{"category", "message"}`` (read
    by type: anything else is the status alone)."""
    items = seq(body)
    item = obj(items[0]) if items else obj(body)
    code = text = None
    if item is not None:
        code = message(item.get("errorCode")) or message(item.get("category"))
        code = code or message(item.get("error"))
        text = message(item.get("message")) or message(item.get("error_description"))
    return AuthFailed(text or code or f"HTTP {status}", status=status, code=code)


def _positive(value: Any, default: float) -> float:
    """A positive finite setting, else ``default``."""
    try:
        n = float(value)
    except (TypeError, ValueError):
        return default
    return n if 0 < n < float("inf") else default


def dumps(obj: Any) -> bytes:
    return orjson.dumps(obj)
