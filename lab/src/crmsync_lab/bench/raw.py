"""The ceiling: a bare aiohttp loop sending Salesforce single-record upserts.

No queue, no database, no rate limiter: ``concurrency`` coroutines each send
``PATCH .../sobjects/Contact/CrmSync_Id__c/<id>`` with a contact's fields,
read the answer, and send the next, for ``duration`` seconds. Same wire
request as the worker's Salesforce adapter in single-record mode, same HTTP
session settings (one pooled session sized to the concurrency), same event
loop (uvloop). Run as its own process (``python -m crmsync_lab.bench.raw``), like
a worker, so its CPU is measured apart from the bench's and the mock's.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any

import aiohttp
import orjson

from crmsync_lab.bench.report import percentile

EXT_FIELD = "CrmSync_Id__c"


@dataclass
class RawResult:
    concurrency: int
    seconds: float
    requests: int  # answered, any status
    ok: int  # 2xx
    errors: int  # no answer (timeout, reset)
    req_per_s: float
    latency_p50_ms: float | None
    latency_p99_ms: float | None
    cpu_seconds: float  # this process, user + system, during the loop
    peak_rss_mb: float


def _body(n: int) -> bytes:
    return orjson.dumps(
        {
            "Email": f"raw.{n}@example.com",
            "FirstName": "Raw",
            "LastName": f"Loop{n}",
            "Company__c": "Acme Corp",
            "Status__c": "active",
        }
    )


async def run_raw(
    base_url: str, token: str, *, concurrency: int, duration: float, prefix: str = "raw"
) -> RawResult:
    """Send as fast as ``concurrency`` requests in flight allow, for ``duration`` seconds."""
    headers = {
        "Authorization": f"Bearer {token}",
        "Content-Type": "application/json",
        "Accept": "application/json",
    }
    url = f"{base_url.rstrip('/')}/services/data/v60.0/sobjects/Contact/{EXT_FIELD}/"
    counts = {"requests": 0, "ok": 0, "errors": 0}
    samples: list[float] = []  # every 16th latency, enough for p99 without a big list
    seq = iter(range(1 << 62))
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=concurrency + 16, ttl_dns_cache=300),
        timeout=aiohttp.ClientTimeout(total=10),
    )
    cpu0 = time.process_time()
    start = time.perf_counter()
    deadline = start + duration

    async def loop() -> None:
        while time.perf_counter() < deadline:
            n = next(seq)
            t0 = time.perf_counter()
            try:
                async with session.patch(
                    f"{url}{prefix}-{n}", data=_body(n), headers=headers
                ) as resp:
                    await resp.read()
                    counts["requests"] += 1
                    if resp.status < 300:
                        counts["ok"] += 1
            except (aiohttp.ClientError, TimeoutError):
                counts["errors"] += 1
                continue
            if n % 16 == 0:
                samples.append((time.perf_counter() - t0) * 1000.0)

    try:
        await asyncio.gather(*(loop() for _ in range(concurrency)))
    finally:
        await session.close()
    seconds = time.perf_counter() - start
    cpu = time.process_time() - cpu0
    return RawResult(
        concurrency=concurrency,
        seconds=seconds,
        requests=counts["requests"],
        ok=counts["ok"],
        errors=counts["errors"],
        req_per_s=counts["ok"] / seconds if seconds > 0 else 0.0,
        latency_p50_ms=percentile(samples, 0.50),
        latency_p99_ms=percentile(samples, 0.99),
        cpu_seconds=cpu,
        peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m crmsync_lab.bench.raw")
    parser.add_argument("base_url", help="a mock Salesforce account, e.g. http://h:p/sf/raw")
    parser.add_argument("token")
    parser.add_argument("--concurrency", type=int, default=200)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--prefix", default="raw", help="record ids are PREFIX-<n>")
    args = parser.parse_args(argv)

    async def go() -> dict[str, Any]:
        res = await run_raw(
            args.base_url,
            args.token,
            concurrency=args.concurrency,
            duration=args.duration,
            prefix=args.prefix,
        )
        return asdict(res)

    try:
        import uvloop

        out = uvloop.run(go())
    except ImportError:  # pragma: no cover - non-Linux
        out = asyncio.run(go())
    sys.stdout.write(orjson.dumps(out).decode() + "\n")


if __name__ == "__main__":
    main()
