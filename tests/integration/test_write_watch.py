"""The session's trace hooks tell a sender when its request is written: once,
for requests with and without a body, and only the task that asked."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from crmsync.crm.base import WRITE_WATCH, WriteWatch, write_trace


@pytest.fixture
async def server() -> AsyncIterator[str]:
    async def echo(request: web.Request) -> web.Response:
        await request.read()
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", echo)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield f"http://127.0.0.1:{port}"
    await runner.cleanup()


async def test_watch_fires_once_at_the_write(server: str) -> None:
    # A stall between the caller and the write (as a busy loop would make it):
    # the watch must see the late write time, not the call time.
    stall = aiohttp.TraceConfig()

    async def block(*_: object) -> None:
        time.sleep(0.08)  # noqa: ASYNC251 (the stall is the point)

    stall.on_request_start.append(block)
    fired: list[tuple[str, float]] = []

    async def send(method: str, body: bytes | None) -> float:
        WRITE_WATCH.set(WriteWatch(lambda: fired.append((method, time.monotonic()))))
        t0 = time.monotonic()
        async with session.request(method, f"{server}/x", data=body) as r:
            await r.read()
        return t0

    async with aiohttp.ClientSession(trace_configs=[stall, write_trace()]) as session:
        starts = await asyncio.gather(
            asyncio.create_task(send("POST", b'{"a": 1}')),
            asyncio.create_task(send("DELETE", None)),
            asyncio.create_task(send("PATCH", b"x" * 200_000)),
        )
        # A request from a task without a watch fires nothing.
        async with session.get(f"{server}/y") as r:
            await r.read()
    assert sorted(m for m, _ in fired) == ["DELETE", "PATCH", "POST"]
    by_method = dict(fired)
    for (method, _), t0 in zip((("POST", 0), ("DELETE", 0), ("PATCH", 0)), starts, strict=True):
        assert by_method[method] >= t0 + 0.07, method
