"""Refreshing access tokens against the mock CRMs' token endpoints and a real Redis
(one server and a Redis Cluster): one token-endpoint call for many processes, a
401 for a replaced token goes back, a fresh token's 401 and the endpoint's
refusal pause, JWT bearer end to end, rotated refresh tokens kept."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from crmsync import connections, vault
from crmsync.connections import Connection
from crmsync.crm import tokens
from crmsync.crm.auth import Auth
from crmsync.crm.http import JsonClient
from crmsync.crm.tokens import SharedToken
from crmsync.errors import AuthFailed, TokenRefused, TokenReplaced
from crmsync.queue import keys
from crmsync.redis_client import RedisClient
from crmsync.settings import Settings
from crmsync_lab.mock.config import AccountSpec, OAuthSpec
from crmsync_lab.mock.limits import Window
from crmsync_lab.mock.server import MockHandle
from support import StartMock, add_connections, rsa_key_pair

KEYS = vault.keyring(vault.new_key())
UNLIMITED = (Window(0, 1000),)


def oauth_account(crm: str, name: str, **oauth: Any) -> AccountSpec:
    return AccountSpec(
        crm,
        name,
        limits=UNLIMITED,
        static_token=False,
        oauth=OAuthSpec.default(crm, name, **oauth),
    )


@pytest.fixture
async def mock(start_mock_crm: StartMock) -> MockHandle:
    return await start_mock_crm(
        oauth_account("salesforce", "sf-o"), oauth_account("hubspot", "hs-o")
    )


@pytest.fixture
async def sessions() -> AsyncIterator[Callable[[], aiohttp.ClientSession]]:
    """One HTTP session per simulated worker process."""
    made: list[aiohttp.ClientSession] = []

    def new() -> aiohttp.ClientSession:
        made.append(aiohttp.ClientSession())
        return made[-1]

    yield new
    for s in made:
        await s.close()


def refresh_connection(mock: MockHandle, crm: str, name: str, **over: str) -> Connection:
    """An oauth-refresh connection to a mock account (its app's default credentials)."""
    base = mock.base_url(crm, name)
    return connections.parse_connection(
        id=f"c-{name}",
        crm=crm,
        account=name,
        base_url=base,
        auth="oauth-refresh",
        client_id=over.get("client_id", f"client-{name}"),
        client_secret=over.get("client_secret", f"secret-{name}"),
        refresh_token=over.get("refresh_token", f"refresh-{name}"),
        login_url=base if crm == "salesforce" else "",
    )


@pytest.fixture
def name(crm: str) -> str:
    """The mock's OAuth account of the test's CRM (``crm`` is parametrized)."""
    return "sf-o" if crm == "salesforce" else "hs-o"


@pytest.fixture
def conn(mock: MockHandle, crm: str, name: str) -> Connection:
    """An oauth-refresh connection to that account."""
    return refresh_connection(mock, crm, name)


def source(
    conn: Connection, redis: RedisClient, session: aiohttp.ClientSession, **kw: Any
) -> SharedToken:
    made = tokens.for_connection(
        conn, redis=redis, keyring=KEYS, session=session, timeout_s=5.0, **kw
    )
    assert isinstance(made, SharedToken)
    return made


def api_url(mock: MockHandle, conn: Connection) -> str:
    if conn.crm == "salesforce":
        return f"{conn.base_url}/services/data/v60.0/sobjects/Contact/describe"
    return f"{conn.base_url}/crm/v3/properties/contacts"


async def ask(client: JsonClient, url: str) -> int:
    status, _, _ = await client.request("GET", url)
    return status


def grants(mock: MockHandle, crm: str, name: str) -> int:
    return int(mock.account_stats(crm, name)["auth"].get("refresh_grants", 0))


@pytest.mark.parametrize("crm", ["salesforce", "hubspot"])
async def test_many_processes_one_token_endpoint_call(
    mock: MockHandle,
    any_redis: RedisClient,
    sessions: Callable[[], aiohttp.ClientSession],
    crm: str,
    name: str,
    conn: Connection,
) -> None:
    procs = [source(conn, any_redis, sessions()) for _ in range(6)]
    creds = await asyncio.gather(*(p.get() for p in procs for _ in range(5)))
    assert len({c.token for c in creds}) == 1
    assert grants(mock, crm, name) == 1
    stats = await any_redis.hget(keys.connection(conn.id).stats, "token_refreshes")
    assert int(stats or 0) == 1
    # Salesforce's instance_url is where API calls go; HubSpot's expires_in is kept.
    if crm == "salesforce":
        assert creds[0].base_url == mock.base_url("salesforce", name)
        assert creds[0].expires is None
    else:
        assert creds[0].expires is not None
        assert creds[0].expires - creds[0].issued == pytest.approx(1800, abs=2)
    client = JsonClient(token=procs[0], settings={}, session=sessions(), base_url=conn.base_url)
    assert await ask(client, api_url(mock, conn)) == 200


@pytest.mark.parametrize("crm", ["salesforce", "hubspot"])
async def test_an_expired_token_is_replaced_once_and_requests_go_back(
    mock: MockHandle,
    redis_client: RedisClient,
    sessions: Callable[[], aiohttp.ClientSession],
    crm: str,
    name: str,
    conn: Connection,
) -> None:
    procs = [source(conn, redis_client, sessions()) for _ in range(4)]
    clients = [
        JsonClient(token=p, settings={}, session=sessions(), base_url=conn.base_url) for p in procs
    ]
    url = api_url(mock, conn)
    assert [await ask(c, url) for c in clients] == [200] * 4  # the token served: proven
    first = procs[0].current
    assert first is not None
    mock.account(crm, name).creds.revoke(refresh=False)  # every access token dies now

    outcomes = await asyncio.gather(*(ask(c, url) for c in clients), return_exceptions=True)
    assert all(isinstance(o, TokenReplaced) for o in outcomes), outcomes
    # The next requests share one new token: one more grant, whoever asks first.
    assert await asyncio.gather(*(ask(c, url) for c in clients)) == [200] * 4
    assert grants(mock, crm, name) == 2
    assert {p.current.token for p in procs if p.current} != {first.token}
    assert len({p.current.token for p in procs if p.current}) == 1

    # A process still holding the old token hears "replaced", not "pause".
    stale = source(conn, redis_client, sessions())
    stale.current = first
    with pytest.raises(TokenReplaced):
        await JsonClient(
            token=stale, settings={}, session=sessions(), base_url=conn.base_url
        ).request("GET", url)
    assert stale.current is not None and stale.current.token != first.token
    assert grants(mock, crm, name) == 2


@pytest.mark.parametrize("crm", ["salesforce", "hubspot"])
async def test_a_token_refused_is_renewed_once_then_its_successor_fails(
    mock: MockHandle,
    redis_client: RedisClient,
    sessions: Callable[[], aiohttp.ClientSession],
    crm: str,
    name: str,
    conn: Connection,
) -> None:
    proc = source(conn, redis_client, sessions())
    client = JsonClient(token=proc, settings={}, session=sessions(), base_url=conn.base_url)
    url = api_url(mock, conn)
    # Sessions revoked (a password reset): a token that never served a request is
    # renewed once, and the new one works.
    await proc.get()
    mock.account(crm, name).creds.revoke(refresh=False)
    with pytest.raises(TokenReplaced):
        await client.request("GET", url)
    assert await ask(client, url) == 200 and grants(mock, crm, name) == 2
    # The CRM refuses every token (the user lost API access): the one renewed
    # because of a 401 is refused too, and that is a failure to pause for.
    mock.set_faults(name, crm, revoke_token=True)
    with pytest.raises(TokenReplaced):
        await client.request("GET", url)
    with pytest.raises(AuthFailed) as exc:
        await client.request("GET", url)
    assert not isinstance(exc.value, TokenReplaced)
    expected = "INVALID_SESSION_ID" if crm == "salesforce" else "INVALID_AUTHENTICATION"
    assert exc.value.code == expected
    assert grants(mock, crm, name) == 3


@pytest.mark.parametrize("crm", ["salesforce", "hubspot"])
async def test_the_endpoint_refusing_reaches_every_waiting_process(
    mock: MockHandle,
    redis_client: RedisClient,
    sessions: Callable[[], aiohttp.ClientSession],
    crm: str,
    name: str,
    conn: Connection,
) -> None:
    mock.account(crm, name).creds.revoke(refresh=True)  # the refresh token is revoked too
    procs = [source(conn, redis_client, sessions()) for _ in range(5)]
    outcomes = await asyncio.gather(*(p.get() for p in procs), return_exceptions=True)
    assert all(isinstance(o, TokenRefused) for o in outcomes), outcomes
    refused = outcomes[0]
    assert isinstance(refused, TokenRefused)
    if crm == "salesforce":
        assert (refused.status, refused.code) == (400, "invalid_grant")
    else:
        assert (refused.status, refused.code) == (400, "BAD_REFRESH_TOKEN")
    assert mock.account_stats(crm, name)["token_requests"] == 1  # the others waited


async def test_jwt_bearer_flow_end_to_end(
    start_mock_crm: StartMock,
    redis_client: RedisClient,
    sessions: Callable[[], aiohttp.ClientSession],
) -> None:
    pem, public = rsa_key_pair()
    mock = await start_mock_crm(oauth_account("salesforce", "sf-j", certificate=public))
    base = mock.base_url("salesforce", "sf-j")
    conn = connections.parse_connection(
        id="jwt1",
        crm="salesforce",
        account="sf-j",
        base_url=None,
        auth="jwt",
        client_id="client-sf-j",
        username="integration@sf-j.example.com",
        private_key=pem,
        login_url=base,
    )
    assert conn.base_url == base and replace(conn.auth, rev="") == Auth(
        "jwt", "client-sf-j", conn.auth.username, base
    )
    proc = source(conn, redis_client, sessions())
    client = JsonClient(token=proc, settings={}, session=sessions(), base_url=conn.base_url)
    assert await ask(client, api_url(mock, conn)) == 200
    assert mock.account_stats("salesforce", "sf-j")["auth"]["jwt_grants"] == 1

    # Another user (not the one the app approved) is refused by the endpoint.
    other = connections.parse_connection(
        id="jwt2",
        crm="salesforce",
        account="sf-j",
        base_url=None,
        auth="jwt",
        client_id="client-sf-j",
        username="someone@else.example.com",
        private_key=pem,
        login_url=base,
    )
    with pytest.raises(TokenRefused) as exc:
        await source(other, redis_client, sessions()).get()
    assert exc.value.code == "invalid_grant"


async def test_new_credentials_never_use_the_old_ones_token(
    mock: MockHandle,
    redis_client: RedisClient,
    sessions: Callable[[], aiohttp.ClientSession],
) -> None:
    conn = refresh_connection(mock, "hubspot", "hs-o")
    old = await source(conn, redis_client, sessions()).get()
    again = await source(conn, redis_client, sessions()).get()
    assert again.token == old.token and grants(mock, "hubspot", "hs-o") == 1
    mock.account("hubspot", "hs-o").creds.control({"refresh_token": "refresh-hs-o-2"})
    changed = connections.apply(conn, connections.Changes(refresh_token="refresh-hs-o-2"))
    assert changed.auth.rev != conn.auth.rev  # new credentials
    fresh = await source(changed, redis_client, sessions()).get()
    assert fresh.token != old.token and grants(mock, "hubspot", "hs-o") == 2
    for unchanged in (
        connections.Changes(settings=["batch_size=50"]),
        connections.Changes(refresh_token="refresh-hs-o-2"),  # the same one again
    ):
        assert connections.apply(changed, unchanged).auth == changed.auth  # same rev


async def test_a_rotated_refresh_token_is_shared_and_kept(
    pg: Any,
    pool: Any,
    redis_client: RedisClient,
    sessions: Callable[[], aiohttp.ClientSession],
    settings: Settings,
) -> None:
    """A token endpoint that rotates its refresh tokens (each works once)."""
    valid = {"r0"}
    issued = 0

    async def token(request: web.Request) -> web.Response:
        nonlocal issued
        form = await request.post()
        if form.get("refresh_token") not in valid:
            return web.json_response({"status": "BAD_REFRESH_TOKEN", "message": "gone"}, status=400)
        valid.discard(str(form["refresh_token"]))
        issued += 1
        valid.add(f"r{issued}")
        return web.json_response(
            {"access_token": f"a{issued}" * 8, "refresh_token": f"r{issued}", "expires_in": 1800}
        )

    app = web.Application()
    app.router.add_post("/oauth/v1/token", token)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        conn = connections.parse_connection(
            id="rot",
            crm="hubspot",
            account="p",
            base_url=f"http://127.0.0.1:{port}",
            auth="oauth-refresh",
            client_id="c",
            client_secret="s",
            refresh_token="r0",
        )
        ring = vault.keyring(settings.secret_key)
        await add_connections(pg, [conn], ring)
        rev = conn.auth.rev

        async def keep(refresh_token: str) -> None:
            await connections.store_rotated(pool, conn.id, ring, rev, refresh_token)

        def proc() -> SharedToken:
            made = tokens.for_connection(
                conn, redis=redis_client, keyring=ring, session=sessions(), timeout_s=5.0,
                on_rotated=keep,
            )  # fmt: skip
            assert isinstance(made, SharedToken)
            return made

        a, b = proc(), proc()
        first = await a.get()
        stored = await connections.load(pg, conn.id, ring)
        assert stored.secrets["refresh_token"] == "r1" and stored.token_hint == "…"
        # b never saw r1 in its own secrets: it refreshes with the shared one.
        b.bad = first.token
        second = await b.get()
        assert second.token != first.token and issued == 2
        assert (await connections.load(pg, conn.id, ring)).secrets["refresh_token"] == "r2"
        # An operator's new credentials win over a rotation that comes late.
        assert not await connections.store_rotated(pool, conn.id, ring, "other-rev", "r9")
    finally:
        await runner.cleanup()
