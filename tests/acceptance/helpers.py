"""What the acceptance tests need beyond ``crmsync_lab.harness``.

``FaultProxy`` sits between the workers and the mock CRMs: it logs every
request (arrival and answer time, account, contact, what the CRM answered) and
injects per-contact faults the mock cannot aim (fail exactly the first attempt
of a contact; apply the write and then lose or delay the answer), so a row
can assert exact attempt counts and the order and timing of arrivals.
``ProxiedCluster`` points every connection at the proxy. The rest are small
helpers: the CLI as a subprocess, waiting, the ledger, the final checks.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

import aiohttp
import orjson
import pytest
from aiohttp import web

from crmsync import db
from crmsync.queue.store import QueueDepth, QueueStore
from crmsync_lab.harness.cluster import Cluster, ClusterConfig
from crmsync_lab.harness.processes import crmsync_argv, free_port
from hostile_crm import HUBSPOT_TEN_SECONDLY

SF_EXT = "CrmSync_Id__c"
HS_EXT = "crmsync_id"


@dataclass(frozen=True, slots=True)
class Fault:
    """What the proxy does to one request instead of passing it through."""

    status: int | None = None  # answer this at once; the CRM never sees the request
    body: Any = None
    headers: Mapping[str, str] = field(default_factory=dict)
    delay_after: float = 0.0  # forward, then hold the answer (the client times out)
    drop_after: bool = False  # forward, then drop the connection (a lost response)


def server_error(crm: str, status: int = 500) -> Fault:
    """The CRM's own 5xx body."""
    if crm == "salesforce":
        body: Any = [{"message": "An unexpected error occurred", "errorCode": "UNKNOWN_EXCEPTION"}]
    else:
        body = {"status": "error", "message": "internal error", "category": "INTERNAL_ERROR"}
    return Fault(status=status, body=body)


def hubspot_429(retry_after: float) -> Fault:
    """HubSpot's TEN_SECONDLY_ROLLING answer, with a ``Retry-After`` header."""
    return Fault(
        status=429, body=dict(HUBSPOT_TEN_SECONDLY), headers={"Retry-After": f"{retry_after:g}"}
    )


@dataclass
class Hit:
    """One request as it went through the proxy."""

    t: float  # arrival, wall clock seconds
    crm: str  # salesforce | hubspot
    account: str
    method: str
    contact: str | None  # our contact id, when one record is addressed
    attempt: int  # how many writes for this (account, contact) arrived so far, this one included
    done: float = 0.0  # when the answer left (or the connection was dropped)
    status: int | None = None  # what the client got; None: dropped or held past its timeout
    upstream: int | None = None  # what the mock answered (None: not forwarded)
    fault: Fault | None = None

    @property
    def kind(self) -> str | None:
        """create / update / delete as the CRM applied it (None if it did not)."""
        code = self.upstream
        if code is None or code >= 300 or self.method == "GET":
            return None
        if self.method == "DELETE":
            return "delete"
        if self.crm == "salesforce":
            return "create" if code == 201 else "update"
        return "create" if self.method == "POST" else "update"


Plan = Callable[[Hit], Fault | None]


class FaultProxy:
    """HTTP proxy in front of the mock CRM, in the test's own event loop."""

    def __init__(self, target: str) -> None:
        self.target = target.rstrip("/")
        self.hits: list[Hit] = []
        self.plan: Plan | None = None
        self.url = ""
        self._seen: Counter[tuple[str, str]] = Counter()
        self._ids: dict[tuple[str, str], str] = {}  # (account, CRM record id) -> contact id
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert isinstance(server, asyncio.base_events.Server)
        self.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=60),
            connector=aiohttp.TCPConnector(limit=0),
            auto_decompress=False,
        )

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()
        self._runner = self._session = None

    def for_account(self, account: str) -> list[Hit]:
        return [h for h in self.hits if h.account == account]

    def attempts(self, account: str) -> Counter[str]:
        """Writes per contact that reached the proxy for ``account`` (a HubSpot
        lookup by crmsync_id before a retried create is a read, not an attempt)."""
        return Counter(
            h.contact for h in self.hits if h.account == account and h.contact and h.method != "GET"
        )

    # -- the request path ---------------------------------------------------------

    def _contact(self, crm: str, account: str, method: str, rest: list[str], query: str,
                 body: bytes) -> str | None:  # fmt: skip
        if crm == "salesforce":
            if len(rest) >= 2 and rest[-2] == SF_EXT:
                return rest[-1]
            if method == "DELETE" and rest and "sobjects" in rest:
                return self._ids.get((account, rest[-1]))
            return None
        if rest and rest[-1] == "contacts" and method == "POST":
            try:
                data = orjson.loads(body)
            except orjson.JSONDecodeError:
                return None
            props = data.get("properties") if isinstance(data, dict) else None
            return str(props[HS_EXT]) if isinstance(props, dict) and HS_EXT in props else None
        if len(rest) >= 2 and rest[-2] == "contacts":
            if parse_qs(query).get("idProperty") == [HS_EXT]:
                return rest[-1]
            return self._ids.get((account, rest[-1]))
        return None

    def _learn(self, crm: str, account: str, contact: str | None, payload: bytes) -> None:
        """Remember the CRM's record id of a contact (deletes name only that id)."""
        try:
            data = orjson.loads(payload) if payload else None
        except orjson.JSONDecodeError:
            return
        if not isinstance(data, dict) or "id" not in data:
            return
        cid = contact
        if crm == "hubspot":
            props = data.get("properties")
            if isinstance(props, dict) and props.get(HS_EXT):
                cid = str(props[HS_EXT])
        if cid:
            self._ids[(account, str(data["id"]))] = cid

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        segs = [s for s in request.path.split("/") if s]
        crm = "salesforce" if segs and segs[0] == "sf" else "hubspot"
        account = segs[1] if len(segs) > 1 else ""
        body = await request.read()
        contact = self._contact(crm, account, request.method, segs[2:], request.query_string, body)
        write = request.method != "GET"
        if contact is not None and write:
            self._seen[(account, contact)] += 1
        attempt = self._seen[(account, contact)] if contact is not None else 0
        hit = Hit(time.time(), crm, account, request.method, contact, attempt)
        self.hits.append(hit)
        # Faults are planned for writes: a read (a lookup by our id) passes through.
        fault = self.plan(hit) if self.plan is not None and write else None
        hit.fault = fault
        try:
            if fault is not None and fault.status is not None:
                hit.status = fault.status
                return web.Response(
                    status=fault.status,
                    body=orjson.dumps(fault.body),
                    headers={"Content-Type": "application/json", **fault.headers},
                )
            assert self._session is not None
            headers = {
                k: v
                for k, v in request.headers.items()
                if k.lower() in ("authorization", "content-type")
            }
            async with self._session.request(
                request.method, self.target + request.path_qs, data=body, headers=headers
            ) as up:
                payload = await up.read()
                hit.upstream = up.status
                out_headers = {
                    k: v
                    for k, v in up.headers.items()
                    if k.lower()
                    not in ("content-length", "transfer-encoding", "connection", "date", "server")
                }
            self._learn(crm, account, contact, payload)
            if fault is not None and fault.drop_after:
                if request.transport is not None:
                    request.transport.abort()
                raise asyncio.CancelledError
            if fault is not None and fault.delay_after:
                await asyncio.sleep(fault.delay_after)
            hit.status = up.status
            return web.Response(status=up.status, body=payload, headers=out_headers)
        finally:
            hit.done = time.time()


class ProxiedCluster(Cluster):
    """A Cluster whose connections talk to the CRMs through a ``FaultProxy``."""

    def __init__(self, config: ClusterConfig) -> None:
        super().__init__(config)
        self.proxy = FaultProxy(self.mock_url)

    async def start(self) -> None:
        await self.proxy.start()
        await super().start()

    async def stop(self) -> None:
        try:
            await super().stop()
        finally:
            await self.proxy.close()

    async def _add_connections(self) -> None:
        await super()._add_connections()
        # Before any worker starts: they load the connections with the proxy's URL.
        conn = await db.connect(self.database_url)
        try:
            await conn.execute(
                "UPDATE connections SET base_url = replace(base_url, $1, $2)",
                self.mock_url,
                self.proxy.url,
            )
        finally:
            await conn.close()


# -- processes, waiting, ledger ---------------------------------------------------


async def cli(cluster: Cluster, *args: str, within: float = 60.0) -> str:
    """Run ``crmsync <args>`` as an operator would, against the cluster; its output."""
    proc = await asyncio.create_subprocess_exec(
        *crmsync_argv(*args),
        env=cluster.env(),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), within)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise AssertionError(f"crmsync {' '.join(args)} did not finish in {within:g}s") from None
    text = out.decode(errors="replace")
    assert proc.returncode == 0, f"crmsync {' '.join(args)} exited {proc.returncode}:\n{text}"
    return text


async def wait_until(
    check: Callable[[], Awaitable[bool]],
    within: float,
    what: str,
    *,
    cluster: Cluster | None = None,
    poll: float = 0.1,
) -> float:
    """Poll ``check`` until true; the seconds it took. Fails naming ``what``."""
    t0 = time.monotonic()
    while True:
        if cluster is not None:
            cluster.check_alive()
        if await check():
            return time.monotonic() - t0
        if time.monotonic() - t0 > within:
            raise AssertionError(f"not reached within {within:g}s: {what}")
        await asyncio.sleep(poll)


async def depth(cluster: Cluster, connection_id: str) -> QueueDepth:
    return await QueueStore(cluster.redis).depth(connection_id)


async def queued(cluster: Cluster, connection_id: str) -> int:
    d = await depth(cluster, connection_id)
    return d.ready + d.leased + d.delayed + d.requeue


async def ledger(cluster: Cluster, connection_id: str) -> dict[str, dict[str, Any]]:
    rows = await cluster.pool.fetch(
        "SELECT * FROM sync_state WHERE connection_id = $1", connection_id
    )
    return {r["contact_id"]: dict(r) for r in rows}


async def dead_letters(cluster: Cluster) -> list[dict[str, Any]]:
    """The open ones: a letter a later sync resolved is history, not a loss."""
    rows = await cluster.pool.fetch(
        "SELECT * FROM dead_letters WHERE resolved_at IS NULL ORDER BY id"
    )
    return [dict(r) for r in rows]


async def counters(cluster: Cluster, connection_id: str) -> dict[str, int]:
    from crmsync import counters

    return await counters.read(cluster.redis, connection_id)


async def account_stats(cluster: Cluster, crm: str, account: str) -> dict[str, Any]:
    out: dict[str, Any] = (await cluster.mock_stats())["accounts"][f"{crm}/{account}"]
    return out


async def settle(cluster: Cluster, within: float = 60.0) -> float:
    """Wait until every change is final in every connection's ledger."""
    t0 = time.monotonic()
    if not await cluster.wait_synced(within):
        unsettled = await cluster.unsettled()
        raise AssertionError(
            f"not synced within {within:g}s; unsettled per connection: {unsettled}"
        )
    return time.monotonic() - t0


async def assert_final(cluster: Cluster, *, dead: Sequence[str] = ()) -> None:
    """The checks every row ends with: the CRM state the rules require for every
    contact, 0 duplicates and 0 limit violations at the mock, nothing lost
    (no ledger row still retrying, no dead letter except ``dead``)."""
    report = await cluster.verify()
    assert report.ok, "\n".join(report.problems())
    letters = await dead_letters(cluster)
    assert sorted(d["contact_id"] for d in letters) == sorted(dead), letters
    retrying = await cluster.pool.fetchval(
        "SELECT count(*) FROM sync_state WHERE status = 'retrying'"
    )
    assert retrying == 0
    assert not await cluster.unsettled()
    totals = (await cluster.mock_stats())["totals"]
    assert totals["duplicates"] == 0, totals
    assert totals["violations"] == 0, totals


async def assert_no_secrets(cluster: Cluster) -> None:
    """No CRM token (nor the key they are sealed under) in any log a crmsync process
    wrote, in `crmsync status`, in the API's answers, the dead letters or the
    ledger; and every such log readable by its owner only."""
    secrets = [c.token for c in cluster.connections if len(c.token) >= 8]
    secrets.append(cluster.secret_key)
    texts: dict[str, str] = {}
    for p in [cluster.server, cluster.relay, *cluster.workers]:
        if p is not None and p.log_path.exists():
            assert p.log_path.stat().st_mode & 0o777 == 0o600, f"{p.log_path} is not 0600"
            texts[str(p.log_path)] = p.log_path.read_text(errors="replace")
    texts["crmsync status"] = await cli(cluster, "status", "--json") + await cli(cluster, "status")
    async with aiohttp.ClientSession(
        headers={"Authorization": f"Bearer {cluster.api_key}"}
    ) as http:
        for path in ("/v1/status", "/v1/connections", "/v1/dead-letters?state=all"):
            async with http.get(cluster.api_url + path) as resp:
                texts[path] = await resp.text()
    texts["dead letters"] = str(await cluster.pool.fetch("SELECT * FROM dead_letters"))
    texts["ledger"] = str(await cluster.pool.fetch("SELECT * FROM sync_state"))
    for where, text in texts.items():
        for secret in secrets:
            assert secret not in text, f"a secret in {where}"


# -- a private PostgreSQL server, for the row that restarts it -------------------------


def _pg_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return candidates[-1] if candidates else None


@dataclass(frozen=True)
class PrivatePostgres:
    """A PostgreSQL server owned by one test: ``url`` of its database, ``restart()``."""

    data_dir: str
    port: int
    user: str
    pg_ctl: str
    as_user: tuple[str, ...]  # ("runuser", "-u", "postgres", "--") when we are root

    @property
    def url(self) -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/crmsync_restart"

    def ctl(self, *args: str) -> None:
        subprocess.run(
            [*self.as_user, self.pg_ctl, "-D", self.data_dir, *args],
            check=True,
            capture_output=True,
            timeout=60,
        )

    def restart(self) -> None:
        """Fast shutdown (every session is terminated), then start again."""
        self.ctl("restart", "-m", "fast", "-w", "-l", os.path.join(self.data_dir, "server.log"))


@contextlib.contextmanager
def private_postgres() -> Iterator[PrivatePostgres]:
    """initdb + pg_ctl on a free port in a temporary directory; removed afterwards.

    The machine's shared server must never be restarted by a test. initdb
    refuses root, so as root the server runs as ``postgres`` via ``runuser``;
    without initdb (or that user) the test is skipped, saying why.
    """
    initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
    if initdb is None or pg_ctl is None:
        pytest.skip("no initdb/pg_ctl on this machine: cannot run a private PostgreSQL")
    as_user: tuple[str, ...] = ()
    owner: pwd.struct_passwd | None = None
    if os.geteuid() == 0:
        runuser = shutil.which("runuser")
        with contextlib.suppress(KeyError):
            owner = pwd.getpwnam("postgres")
        if runuser is None or owner is None:
            pytest.skip("running as root without runuser and a postgres user: initdb refuses root")
        as_user = (runuser, "-u", "postgres", "--")
    user = "root" if os.geteuid() == 0 else getpass.getuser()
    data = tempfile.mkdtemp(prefix="crmsync-pg-")
    if owner is not None:
        os.chown(data, owner.pw_uid, owner.pw_gid)
    pg = PrivatePostgres(data, free_port(), user, pg_ctl, as_user)
    try:
        subprocess.run(
            [*as_user, initdb, "-D", data, "-A", "trust", "-U", user, "--no-sync", "-E", "UTF8"],
            check=True,
            capture_output=True,
            timeout=120,
        )
        opts = f"-p {pg.port} -k {data} -c listen_addresses=127.0.0.1 -c fsync=off"
        pg.ctl("start", "-w", "-o", opts, "-l", os.path.join(data, "server.log"))
        try:
            yield pg
        finally:
            pg.ctl("stop", "-m", "immediate", "-w")
    finally:
        shutil.rmtree(data, ignore_errors=True)
