"""A hostile CRM for tests: one misbehaviour per account, as real CRMs (and the
proxies in front of them) misbehave.

A plain asyncio HTTP/1.1 server (no framework: it must be able to do what no
framework lets a handler do: reset a connection mid-answer, trickle a body,
lie in ``Content-Length``). Every account lives under ``/<account>`` and is
either Salesforce- or HubSpot-shaped by the paths the adapters send; its
``mode`` decides the answer to every request. The server keeps a log of every
request (arrival time, account, method, path, what it answered) for the
test's assertions, and never imports the code it tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

CHUNK = 16 * 1024


@dataclass
class Hit:
    t: float  # arrival, monotonic seconds
    account: str
    method: str
    path: str
    status: int | None = None  # None: no status line was sent (reset)


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    reset: bool = False  # drop the connection instead of answering
    trickle: float = 0.0  # seconds between the body's bytes (a slow body)
    chunked: bool = False  # no Content-Length: the body streams until done
    declared: int | None = None  # a Content-Length other than the body's


def j(obj: Any) -> bytes:
    return orjson.dumps(obj)


def _sf_limited(retry_after: str) -> Answer:
    body = j([{"message": "TotalRequests Limit exceeded.", "errorCode": "REQUEST_LIMIT_EXCEEDED"}])
    return Answer(429, body, {"Retry-After": retry_after})


# HubSpot's answer over its TEN_SECONDLY_ROLLING limit (documented shape).
HUBSPOT_TEN_SECONDLY = {
    "status": "error",
    "message": "You have reached your ten_secondly_rolling limit.",
    "errorType": "RATE_LIMIT",
    "category": "RATE_LIMITS",
    "policyName": "TEN_SECONDLY_ROLLING",
}


def _hs_429(retry_after: str) -> Answer:
    return Answer(429, j(HUBSPOT_TEN_SECONDLY), {"Retry-After": retry_after})


# mode -> (what each request of the account is answered, given its token)
MODES: dict[str, Callable[[str], Answer]] = {
    # Salesforce-shaped 2xx that do not confirm the record.
    "sf_id_number": lambda tok: Answer(201, j({"id": 12345, "success": True, "created": True})),
    "sf_id_object": lambda tok: Answer(201, j({"id": {"value": "003"}, "success": True})),
    "sf_not_json": lambda tok: Answer(201, b"<html><body>Created (not really)</body></html>"),
    "sf_no_record": lambda tok: Answer(200, j({"echo": f"Authorization: Bearer {tok}"})),
    "sf_echo_token": lambda tok: Answer(201, j({"id": None, "debug": tok})),
    # HubSpot-shaped.
    "hs_results_ints": lambda tok: Answer(200, j({"status": "COMPLETE", "results": [1, 2, 3]})),
    "hs_errors_strings": lambda tok: Answer(207, j({"status": "COMPLETE", "errors": ["boom"]})),
    "hs_no_id": lambda tok: Answer(201, j({"properties": {"email": "x@example.com"}})),
    # Bodies over the cap, declared or streamed; a body slower than the timeout.
    "huge_declared": lambda tok: Answer(200, b"x" * (256 * 1024)),
    "huge_streamed": lambda tok: Answer(200, b"[" + b"1," * (200 * 1024) + b"1]", chunked=True),
    "slow_body": lambda tok: Answer(201, j({"id": "003SLOW", "success": True}), trickle=0.4),
    # Redirects, resets, an empty 5xx.
    "redirect": lambda tok: Answer(
        302, b"", {"Location": "http://admin:hunter2@elsewhere.example/services"}
    ),
    "reset": lambda tok: Answer(0, reset=True),
    "server_error_html": lambda tok: Answer(502, b"<html>Bad Gateway</html>"),
    # Absurd rate-limit waits.
    "retry_after_inf": lambda tok: _hs_429("inf"),
    "retry_after_huge": lambda tok: _sf_limited("1000000000"),
    "retry_after_zero": lambda tok: _hs_429("0"),
    "retry_after_negative": lambda tok: _hs_429("-5"),
    "retry_after_garbage": lambda tok: _hs_429("soon, promise"),
}  # fmt: skip
RATE_LIMIT_MODES = frozenset(m for m in MODES if m.startswith("retry_after_"))


class HostileCrm:
    """``modes``: account -> mode (a key of ``MODES``); ``tokens``: account -> the
    token its connection sends (echoed by some modes, as a careless CRM would)."""

    def __init__(self, modes: dict[str, str], tokens: dict[str, str]) -> None:
        self.modes = modes
        self.tokens = tokens
        self.hits: list[Hit] = []
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    def base_url(self, account: str) -> str:
        return f"http://127.0.0.1:{self.port}/{account}"

    def of(self, account: str) -> list[Hit]:
        return [h for h in self.hits if h.account == account]

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            for w in list(self._writers):
                w.transport.abort()
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                lines = head.decode("latin-1").split("\r\n")
                method, target, _ = lines[0].split(" ", 2)
                headers = {
                    k.strip().lower(): v.strip()
                    for k, _, v in (line.partition(":") for line in lines[1:] if line)
                }
                length = int(headers.get("content-length", "0") or 0)
                if length:
                    await reader.readexactly(length)
                account = target.split("/")[1] if target.count("/") >= 1 else ""
                hit = Hit(time.monotonic(), account, method, target)
                self.hits.append(hit)
                mode = self.modes.get(account)
                answer = MODES[mode](self.tokens.get(account, "")) if mode else Answer(404)
                if answer.reset:
                    writer.transport.abort()
                    return
                hit.status = answer.status
                await self._answer(writer, answer)
        except (ConnectionError, asyncio.CancelledError):
            return
        finally:
            self._writers.discard(writer)
            with contextlib.suppress(Exception):
                writer.close()

    async def _answer(self, writer: asyncio.StreamWriter, a: Answer) -> None:
        head = [f"HTTP/1.1 {a.status} X"]
        head += [f"{k}: {v}" for k, v in a.headers.items()]
        head.append("Content-Type: application/json")
        if a.chunked:
            head.append("Transfer-Encoding: chunked")
        else:
            head.append(f"Content-Length: {a.declared if a.declared is not None else len(a.body)}")
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1"))
        if a.chunked:
            for i in range(0, len(a.body), CHUNK):
                part = a.body[i : i + CHUNK]
                writer.write(f"{len(part):x}\r\n".encode() + part + b"\r\n")
                await writer.drain()
            writer.write(b"0\r\n\r\n")
        elif a.trickle:
            for i in range(len(a.body)):
                writer.write(a.body[i : i + 1])
                await writer.drain()
                await asyncio.sleep(a.trickle)
        else:
            writer.write(a.body)
        await writer.drain()
