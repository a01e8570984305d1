"""A lean HTTP/1.1 server protocol for the mock CRMs.

aiohttp's server topped out near 5,000 requests/s on this 2-core machine
(most of it in aiohttp's per-request objects), below the 8,000/s the mock must
sustain to never be the bottleneck. The mock's answers are computed in memory,
so a plain asyncio protocol (uvloop) suffices: keep-alive, Content-Length and
chunked bodies, ``Expect: 100-continue``, responses written in request order
(a response may be delayed by the simulated latency) and one write each.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, Protocol, cast
from urllib.parse import parse_qsl, unquote

import orjson

MAX_HEAD = 64 * 1024
MAX_BODY = 16 * 1024 * 1024
REASONS = {s.value: s.phrase for s in HTTPStatus}


@dataclass(slots=True)
class Request:
    method: str
    segs: list[str]  # path segments, percent-decoded; segs[0] == ""
    query: dict[str, str]
    headers: dict[str, str]  # lower-case names
    body: bytes
    version: str = "HTTP/1.1"

    @property
    def path(self) -> str:
        return "/".join(self.segs)


# What a finished request turns into: the full response bytes, or None to drop
# the connection without answering (a lost response).
Finish = Callable[[], bytes | None]


class App(Protocol):
    def begin(self, request: Request) -> tuple[float, Finish]:
        """Account for the request now; answer after the returned delay (seconds)."""
        ...


def response(status: int, body: bytes | None, headers: dict[str, str]) -> bytes:
    head = [f"HTTP/1.1 {status} {REASONS.get(status, 'Unknown')}\r\n"]
    head.extend(f"{k}: {v}\r\n" for k, v in headers.items())
    if body is None:
        head.append("Content-Length: 0\r\n\r\n" if status != 204 else "\r\n")
        return "".join(head).encode("latin-1")
    head.append(f"Content-Length: {len(body)}\r\n\r\n")
    return "".join(head).encode("latin-1") + body


class BadRequest(Exception):
    pass


def _crash(exc: Exception) -> Finish:
    body = orjson.dumps({"error": f"mock failure: {type(exc).__name__}: {exc}"})
    out = response(500, body, {"Content-Type": "application/json"})
    return lambda: out


class _Slot:
    __slots__ = ("close", "data", "done", "timer")

    def __init__(self, close: bool) -> None:
        self.done = False
        self.data: bytes | None = None
        self.close = close
        self.timer: asyncio.TimerHandle | None = None


class HttpProtocol(asyncio.Protocol):
    def __init__(self, app: App) -> None:
        self.app = app
        self.loop = asyncio.get_running_loop()
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None
        self.pending: deque[_Slot] = deque()
        self.continued = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport; they quack alike.
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        for slot in self.pending:
            if slot.timer is not None:
                slot.timer.cancel()
        self.pending.clear()

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while self.transport is not None:
            try:
                req = self._parse()
            except BadRequest as exc:
                self._fail(str(exc))
                return
            if req is None:
                return
            conn = req.headers.get("connection", "").lower()
            old = req.version == "HTTP/1.0" and conn != "keep-alive"
            slot = _Slot(close=conn == "close" or old)
            self.pending.append(slot)
            try:
                delay, finish = self.app.begin(req)
            except Exception as exc:  # a bug must answer 500, not kill the connection
                delay, finish = 0.0, _crash(exc)
            if delay > 0:
                slot.timer = self.loop.call_later(delay, self._complete, slot, finish)
            else:
                self._complete(slot, finish)

    def _complete(self, slot: _Slot, finish: Finish) -> None:
        if self.transport is None:
            return
        try:
            slot.data = finish()
        except Exception as exc:
            slot.data = _crash(exc)()
        slot.done = True
        slot.timer = None
        pending = self.pending
        while pending and pending[0].done and self.transport is not None:
            head = pending.popleft()
            if head.data is None:
                self.transport.abort()
                return
            self.transport.write(head.data)
            if head.close:
                self.transport.close()
                return

    def _fail(self, why: str) -> None:
        assert self.transport is not None
        body = f'{{"error":"bad request: {why}"}}'.encode()
        self.transport.write(response(400, body, {"Content-Type": "application/json"}))
        self.transport.close()

    def _parse(self) -> Request | None:
        buf = self.buf
        if not buf:
            return None
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            if len(buf) > MAX_HEAD:
                raise BadRequest("header too large")
            return None
        lines = bytes(buf[:end]).decode("latin-1").split("\r\n")
        try:
            method, target, version = lines[0].split(" ", 2)
        except ValueError:
            raise BadRequest("malformed request line") from None
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        start = end + 4
        if "chunked" in headers.get("transfer-encoding", "").lower():
            got = _dechunk(buf, start)
            if got is None:
                return None
            body, stop = got
        else:
            try:
                length = int(headers.get("content-length", "0"))
            except ValueError:
                raise BadRequest("bad content-length") from None
            if length > MAX_BODY:
                raise BadRequest("body too large")
            if len(buf) < start + length:
                if headers.get("expect", "").lower() == "100-continue" and not self.continued:
                    self.continued = True
                    assert self.transport is not None
                    self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                return None
            body, stop = bytes(buf[start : start + length]), start + length
        del buf[:stop]
        self.continued = False
        path, _, qs = target.partition("?")
        segs = path.split("/")
        if "%" in path:
            segs = [unquote(s) for s in segs]
        query = dict(parse_qsl(qs, keep_blank_values=True)) if qs else {}
        return Request(method, segs, query, headers, body, version)


def _dechunk(buf: bytearray, start: int) -> tuple[bytes, int] | None:
    """A complete chunked body from ``start``, or None while more is to come."""
    out = bytearray()
    pos = start
    while True:
        eol = buf.find(b"\r\n", pos)
        if eol < 0:
            return None
        try:
            size = int(bytes(buf[pos:eol]).split(b";", 1)[0], 16)
        except ValueError:
            raise BadRequest("bad chunk size") from None
        pos = eol + 2
        if size == 0:
            trailer = buf.find(b"\r\n", pos)
            return None if trailer < 0 else (bytes(out), trailer + 2)
        if len(buf) < pos + size + 2:
            return None
        out += buf[pos : pos + size]
        if len(out) > MAX_BODY:
            raise BadRequest("body too large")
        pos += size + 2


async def serve(app: App, host: str, port: int, *, backlog: int = 2048) -> asyncio.Server:
    loop = asyncio.get_running_loop()

    def factory() -> Any:
        return HttpProtocol(app)

    return await loop.create_server(factory, host, port, backlog=backlog, reuse_address=True)
