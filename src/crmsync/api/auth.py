"""Bearer API keys, checked before anything else reads the request.

A plain ASGI middleware rather than a FastAPI dependency: dependencies run
after the body is parsed, so a malformed body would answer 422 to a caller
without a key. With no keys configured every protected route answers 401.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable

import orjson
from starlette.types import ASGIApp, Receive, Scope, Send

from crmsync.api.metrics import AUTH_FAILURES

_BODY = orjson.dumps({"detail": "missing or invalid API key; send Authorization: Bearer <key>"})


class BearerAuth:
    def __init__(
        self, app: ASGIApp, *, keys: Iterable[str], protected_prefix: str = "/v1/"
    ) -> None:
        self.app = app
        self.keys = tuple(k.encode() for k in keys)
        self.prefix = protected_prefix

    def allowed(self, header: bytes | None) -> bool:
        if not header or not self.keys:
            return False
        scheme, _, key = header.partition(b" ")
        key = key.strip()
        if scheme.lower() != b"bearer" or not key:
            return False
        # Compare against every key so timing does not tell which one matched.
        return sum(hmac.compare_digest(key, k) for k in self.keys) > 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(self.prefix):
            await self.app(scope, receive, send)
            return
        header = next((v for k, v in scope["headers"] if k == b"authorization"), None)
        if self.allowed(header):
            await self.app(scope, receive, send)
            return
        AUTH_FAILURES.inc()
        await send(
            {
                "type": "http.response.start",
                "status": 401,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(_BODY)).encode()),
                    (b"www-authenticate", b"Bearer"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": _BODY})
