"""``call`` tells a send's watch when its request is written (once, with or
without a body, only the watch it was given) and asks it for a permit before
every further request of the same send."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from crmsync.crm.http import WriteWatch, call

LIMIT = aiohttp.ClientTimeout(total=5)
JSON = {"Content-Type": "application/json"}


@pytest.fixture
async def server() -> AsyncIterator[tuple[str, list[tuple[str, str]]]]:
    seen: list[tuple[str, str]] = []

    async def echo(request: web.Request) -> web.Response:
        body = await request.read()
        seen.append((request.method, request.headers.get("Content-Type", "")))
        return web.json_response({"len": len(body)})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", echo)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield f"http://127.0.0.1:{port}", seen
    await runner.cleanup()


async def test_watch_fires_once_at_the_write(server: tuple[str, list[tuple[str, str]]]) -> None:
    url, seen = server
    # A stall inside aiohttp before the write (as a busy loop or a descheduled
    # process would make it): the watch must see the late write, not the call.
    stall = aiohttp.TraceConfig()

    async def block(*_: object) -> None:
        time.sleep(0.08)  # noqa: ASYNC251 (the stall is the point)

    stall.on_request_start.append(block)
    fired: list[tuple[str, float]] = []

    async def send(method: str, body: bytes | None) -> float:
        watch = WriteWatch(lambda: fired.append((method, time.monotonic())))
        t0 = time.monotonic()
        status, _, raw = await call(
            session, method, f"{url}/x", headers=JSON, body=body, limit=LIMIT, watch=watch
        )
        assert status == 200 and raw == b'{"len": %d}' % len(body or b"")
        return t0

    async with aiohttp.ClientSession(trace_configs=[stall]) as session:
        starts = await asyncio.gather(
            asyncio.create_task(send("POST", b'{"a": 1}')),
            asyncio.create_task(send("PATCH", b"x" * 200_000)),
        )
        # Without a body the headers are the request: fired within the call.
        await send("DELETE", None)
        # A request without a watch fires nothing.
        await call(session, "GET", f"{url}/y", headers=JSON, body=None, limit=LIMIT)
    assert sorted(m for m, _ in fired) == ["DELETE", "PATCH", "POST"]
    by_method = dict(fired)
    assert by_method["POST"] >= starts[0] + 0.07
    assert by_method["PATCH"] >= starts[1] + 0.07
    assert ("POST", "application/json") in seen  # the body keeps its content type


async def test_follow_up_requests_wait_for_a_permit(
    server: tuple[str, list[tuple[str, str]]],
) -> None:
    url, seen = server
    events: list[str] = []

    async def permit() -> None:
        events.append("permit")
        await asyncio.sleep(0.01)

    async with aiohttp.ClientSession() as session:
        watch = WriteWatch(lambda: events.append("written"), permit)
        for method, body in (("POST", b"{}"), ("PATCH", b"{}"), ("DELETE", None)):
            await call(
                session, method, f"{url}/a", headers=JSON, body=body, limit=LIMIT, watch=watch
            )
    assert events == ["written", "permit", "permit"]
    assert [m for m, _ in seen] == ["POST", "PATCH", "DELETE"]
