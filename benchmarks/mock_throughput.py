"""How many requests/s one `crmsync mock-crm` process serves.

Starts the mock as a subprocess (50 accounts, no limits so every request does
the full work: auth, windows, JSON, record upsert), then drives it with `wrk`
(if installed: it costs the least CPU of the two cores) or with an aiohttp
load generator, mixing Salesforce upserts by external id and HubSpot batch
upserts. The figure is cross-checked with the mock's own request count.

    .venv/bin/python benchmarks/mock_throughput.py [--seconds 10] [--connections 64]
        [--latency-ms 2 --jitter-ms 1] [--generator wrk|python]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from typing import Any

import psutil

LUA = r"""
counter = 0
sf_path = "/services/data/v60.0/sobjects/Contact/CrmSync_Id__c/"
hs_path = "/crm/v3/objects/contacts/batch/upsert"
json = {["Content-Type"] = "application/json"}
request = function()
  counter = counter + 1
  local n = counter % 25 + 1
  local id = "c" .. (counter % 20000)
  local email = id .. "@example.com"
  if counter % 2 == 0 then
    local acct = string.format("sf-%02d", n)
    json["Authorization"] = "Bearer token-" .. acct
    local body = '{"Email":"' .. email .. '","FirstName":"Ada","LastName":"L",'
      .. '"Company__c":"Acme","Status__c":"active"}'
    return wrk.format("PATCH", "/sf/" .. acct .. sf_path .. id, json, body)
  end
  local acct = string.format("hs-%02d", n)
  json["Authorization"] = "Bearer token-" .. acct
  local body = '{"inputs":[{"id":"' .. id .. '","idProperty":"crmsync_id",'
    .. '"properties":{"email":"' .. email .. '","lastname":"L"}}]}'
  return wrk.format("POST", "/hs/" .. acct .. hs_path, json, body)
end
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def stats(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"{url}/_control/stats", timeout=10) as r:
        return json.loads(r.read())  # type: ignore[no-any-return]


def wait_ready(url: str, proc: subprocess.Popen[bytes]) -> None:
    for _ in range(100):
        if proc.poll() is not None:
            raise SystemExit("mock-crm exited early")
        try:
            urllib.request.urlopen(f"{url}/_control/health", timeout=1).read()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit("mock-crm did not start")


def run_wrk(url: str, seconds: int, connections: int) -> float:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(LUA)
    try:
        out = subprocess.run(
            ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "-s", f.name, url],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    finally:
        os.unlink(f.name)
    print(out)
    line = next(x for x in out.splitlines() if x.startswith("Requests/sec:"))
    return float(line.split()[1])


async def run_python(url: str, seconds: int, connections: int) -> float:
    import aiohttp

    counter = itertools.count()
    stop = time.monotonic() + seconds
    done = 0

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal done
        while time.monotonic() < stop:
            n = next(counter)
            cid = f"c{n % 20000}"
            if n % 2 == 0:
                acct = f"sf-{n % 25 + 1:02d}"
                path = f"/sf/{acct}/services/data/v60.0/sobjects/Contact/CrmSync_Id__c/{cid}"
                body: Any = {"Email": f"{cid}@example.com", "LastName": "L"}
                method = "PATCH"
            else:
                acct = f"hs-{n % 25 + 1:02d}"
                path = f"/hs/{acct}/crm/v3/objects/contacts/batch/upsert"
                props = {"email": f"{cid}@example.com", "lastname": "L"}
                body = {"inputs": [{"id": cid, "idProperty": "crmsync_id", "properties": props}]}
                method = "POST"
            headers = {"Authorization": f"Bearer token-{acct}"}
            async with session.request(method, url + path, json=body, headers=headers) as r:
                await r.read()
            done += 1

    conn = aiohttp.TCPConnector(limit=connections)
    async with aiohttp.ClientSession(connector=conn) as session:
        t0 = time.monotonic()
        await asyncio.gather(*(worker(session) for _ in range(connections)))
        return done / (time.monotonic() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=int, default=10)
    p.add_argument("--connections", type=int, default=64)
    p.add_argument("--latency-ms", type=float, default=2.0)
    p.add_argument("--jitter-ms", type=float, default=1.0)
    p.add_argument("--generator", choices=["wrk", "python"], default=None)
    args = p.parse_args()
    generator = args.generator or ("wrk" if shutil.which("wrk") else "python")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    crmsync = os.path.join(os.path.dirname(sys.executable), "crmsync")
    cmd = [
        crmsync, "mock-crm", "--port", str(port), "--scenario", "none",
        "--salesforce", "25", "--hubspot", "25", "--sf-limit", "0", "--hs-limit", "0",
        "--latency-ms", str(args.latency_ms), "--jitter-ms", str(args.jitter_ms),
    ]  # fmt: skip
    print("mock:", " ".join(cmd[1:]))
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
    try:
        wait_ready(url, proc)
        cpu = psutil.Process(proc.pid)
        user0, sys0 = cpu.cpu_times()[:2]
        before = stats(url)["totals"]["requests"]
        t0 = time.monotonic()
        if generator == "wrk":
            client_rate = run_wrk(url, args.seconds, args.connections)
        else:
            client_rate = asyncio.run(run_python(url, args.seconds, args.connections))
        elapsed = time.monotonic() - t0
        user1, sys1 = cpu.cpu_times()[:2]
        user, kernel = user1 - user0, sys1 - sys0
        busy = user + kernel
        after = stats(url)
        served = after["totals"]["requests"] - before
        statuses: dict[str, int] = {}
        for acct in after["accounts"].values():
            for code, n in acct["by_status"].items():
                statuses[code] = statuses.get(code, 0) + n
        print(f"generator: {generator}, {args.connections} connections, {args.seconds}s")
        print(f"client-measured: {client_rate:,.0f} requests/s")
        print(f"mock-counted:    {served / elapsed:,.0f} requests/s ({served} requests)")
        print(
            f"mock CPU:        {busy:.1f} s in {elapsed:.1f} s ({busy / elapsed:.0%} of one core:"
            f" user {user:.1f} s, kernel {kernel:.1f} s)"
        )
        print(f"per CPU-second:  {served / busy:,.0f} requests (what one idle core would serve)")
        print(f"statuses: {statuses}")
    finally:
        proc.terminate()
        proc.wait(timeout=10)


if __name__ == "__main__":
    main()
