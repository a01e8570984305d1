"""`connections add/test/setup/update/remove` against the mock CRMs: the checks of a
half-configured org or portal (external id field or property missing, not
unique, not an External ID), bad tokens, `setup` creating HubSpot's property,
`update` keeping the ledger, `remove` asking first, onboarding within the
connection's limit, no secret in any output."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import asyncpg
import pytest
from typer.testing import CliRunner, Result

from crmsync.cli import app
from crmsync_lab.mock.config import AccountSpec, MockConfig, OAuthSpec
from crmsync_lab.mock.hubspot import HubSpotPortal
from crmsync_lab.mock.limits import Window
from crmsync_lab.mock.server import MockHandle, start_mock
from support import fetch_now, rsa_key_pair

StartThreaded = Callable[..., MockHandle]


@pytest.fixture
def threaded_mock() -> Iterator[StartThreaded]:
    """Mock CRMs on a loop of their own thread: the CLI (CliRunner) runs its own
    event loop in the test's thread while the mock answers."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    handles: list[MockHandle] = []

    def start(*accounts: AccountSpec) -> MockHandle:
        config = MockConfig(list(accounts), latency_ms=0.0, jitter_ms=0.0)
        handles.append(asyncio.run_coroutine_threadsafe(start_mock(config), loop).result(10))
        return handles[-1]

    yield start
    for h in handles:
        asyncio.run_coroutine_threadsafe(h.close(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)
    loop.close()


def run(database_url: str, redis_url: str, *args: str) -> Result:
    return CliRunner().invoke(
        app,
        ["connections", *args, "--database-url", database_url, "--redis-url", redis_url],
        env={"COLUMNS": "200"},
    )


def add(
    database_url: str, redis_url: str, mock: MockHandle, crm: str, name: str, *extra: str
) -> Result:
    return run(
        database_url,
        redis_url,
        "add",
        name,
        "--crm",
        crm,
        "--account",
        name,
        "--base-url",
        mock.base_url(crm, name),
        *(("--token", mock.token(crm, name)) if "--auth" not in extra else ()),
        *extra,
    )


def lines(result: Result) -> list[str]:
    return [ln for ln in result.output.splitlines() if ln[:1] in ("✓", "✗")]


UNLIMITED = (Window(0, 1000),)

# (crm, id_field, the check line expected, and part of its fix)
VARIANTS = [
    ("salesforce", "ok", "✓ external id field: CrmSync_Id__c: External ID, unique", None),
    (
        "salesforce",
        "missing",
        "✗ external id field: Contact has no field CrmSync_Id__c",
        "Setup → Object Manager → Contact → Fields & Relationships → New → Text (length 64) → "
        "Field Label CrmSync Id, Field Name CrmSync_Id → check Unique and External ID",
    ),
    (
        "salesforce",
        "not-unique",
        "✗ external id field: CrmSync_Id__c is not unique",
        "CrmSync_Id__c → Edit → check unique → Save",
    ),
    (
        "salesforce",
        "not-external-id",
        "✗ external id field: CrmSync_Id__c is not an External ID and not unique",
        "Edit → check External ID and unique → Save",
    ),
    ("hubspot", "ok", "✓ id property: crmsync_id: unique values", None),
    (
        "hubspot",
        "missing",
        "✗ id property: the portal has no contact property crmsync_id",
        "`crmsync connections setup` creates it",
    ),
    (
        "hubspot",
        "not-unique",
        "✗ id property: crmsync_id does not require unique values",
        "set --settings id_property=<its name>",
    ),
]


@pytest.mark.parametrize(("crm", "id_field", "expected", "fix"), VARIANTS)
def test_connections_test_finds_what_the_crm_lacks(
    database_url: str,
    redis_url: str,
    threaded_mock: StartThreaded,
    crm: str,
    id_field: str,
    expected: str,
    fix: str | None,
) -> None:
    name = f"{crm[:2]}-{id_field}"
    mock = threaded_mock(AccountSpec(crm, name, limits=UNLIMITED, id_field=id_field))
    assert add(database_url, redis_url, mock, crm, name, "--no-check").exit_code == 0
    res = run(database_url, redis_url, "test", name)
    found = lines(res)
    assert found[0].startswith("✓ authentication: the bearer token is accepted"), res.output
    assert expected in found, res.output
    if fix is None:
        assert res.exit_code == 0 and all(ln.startswith("✓") for ln in found), res.output
        assert f"{name}: ready to sync" in res.output
    else:
        assert res.exit_code == 1, res.output
        at = res.output.index(expected)
        assert fix in res.output[at:].split("\n✓")[0].split("\n✗")[0], res.output
    mapped = "mapped fields" if crm == "salesforce" else "mapped properties"
    assert any(ln.startswith(f"✓ {mapped}: ") for ln in found), res.output
    usage = next(ln for ln in found if "daily API usage" in ln)
    assert " of " in usage and "requests used" in usage, usage
    assert mock.token(crm, name) not in res.output


@pytest.mark.parametrize("crm", ["salesforce", "hubspot"])
def test_add_checks_first_and_refuses_a_bad_token_or_a_missing_field(
    database_url: str, redis_url: str, threaded_mock: StartThreaded, crm: str
) -> None:
    mock = threaded_mock(
        AccountSpec(crm, "good", limits=UNLIMITED),
        AccountSpec(crm, "bare", limits=UNLIMITED, id_field="missing"),
    )
    bad = run(
        database_url, redis_url,
        "add", "bad", "--crm", crm, "--account", "good", "--base-url", mock.base_url(crm, "good"),
        "--token", "not-the-token-0000",
    )  # fmt: skip
    assert bad.exit_code == 1 and "connection 'bad' not added" in str(bad.exception)
    said = (
        "INVALID_SESSION_ID: Session expired or invalid)"
        if crm == "salesforce"
        else "INVALID_AUTHENTICATION: Authentication credentials not found."
    )
    (only,) = lines(bad)  # nothing more is asked of a CRM that refuses the token
    assert only.startswith(f"✗ authentication: the CRM refused the token (401 {said}"), only
    assert "crmsync connections update bad --token …" in bad.output
    assert "not-the-token-0000" not in bad.output
    bare = add(database_url, redis_url, mock, crm, "bare")
    assert bare.exit_code == 1 and "not added" in str(bare.exception)
    assert fetch_now(database_url, "SELECT id FROM connections") == []

    good = add(database_url, redis_url, mock, crm, "good", "--rate-limit", "50/s")
    assert good.exit_code == 0, good.output
    assert all(ln.startswith("✓") for ln in lines(good)) and len(lines(good)) == 4
    assert "added connection good" in good.output
    assert [r["id"] for r in fetch_now(database_url, "SELECT id FROM connections")] == ["good"]


def test_setup_creates_the_hubspot_properties_and_lists_salesforce_steps(
    database_url: str, redis_url: str, threaded_mock: StartThreaded
) -> None:
    mock = threaded_mock(
        AccountSpec("hubspot", "hs-bare", limits=UNLIMITED, id_field="missing"),
        AccountSpec("salesforce", "sf-bare", limits=UNLIMITED, id_field="missing"),
    )
    for crm, name in (("hubspot", "hs-bare"), ("salesforce", "sf-bare")):
        assert add(database_url, redis_url, mock, crm, name, "--no-check").exit_code == 0
    portal = mock.account("hubspot", "hs-bare").store
    assert isinstance(portal, HubSpotPortal)
    del portal.properties["crmsync_status"]  # created by setup too
    res = run(database_url, redis_url, "setup", "hs-bare")
    assert res.exit_code == 0, res.output
    assert "✓ setup: created property crmsync_id (unique values)" in lines(res)
    assert "✓ setup: created property crmsync_status" in lines(res)
    assert portal.properties["crmsync_id"]["hasUniqueValue"] is True
    assert portal.properties["crmsync_status"]["hasUniqueValue"] is False
    again = run(database_url, redis_url, "test", "hs-bare")
    assert again.exit_code == 0 and "✓ id property: crmsync_id: unique values" in lines(again)

    sf = run(database_url, redis_url, "setup", "sf-bare")
    assert sf.exit_code == 1
    assert "✗ external id field: Contact has no field CrmSync_Id__c" in lines(sf)
    assert "an admin creates it: Setup → Object Manager → Contact" in sf.output


def test_onboarding_takes_permits_of_the_connections_limit(
    database_url: str, redis_url: str, threaded_mock: StartThreaded
) -> None:
    mock = threaded_mock(AccountSpec("salesforce", "tight", limits=(Window(2, 1000),)))
    added = add(database_url, redis_url, mock, "salesforce", "tight", "--rate-limit", "2/s")
    assert added.exit_code == 0, added.output
    for _ in range(3):
        assert run(database_url, redis_url, "test", "tight").exit_code == 0
    stats = mock.account_stats("salesforce", "tight")
    assert stats["requests"] == 8  # 2 per check: describe and /limits
    assert stats["violations"] == 0  # the CRM never refused one: our limiter spaced them


def test_settings_checked_by_the_crm_field_map_and_oauth_add(
    database_url: str, redis_url: str, threaded_mock: StartThreaded
) -> None:
    mock = threaded_mock(
        AccountSpec(
            "salesforce",
            "sf-oauth",
            limits=UNLIMITED,
            static_token=False,
            oauth=OAuthSpec.default("salesforce", "sf-oauth"),
        )
    )
    base = mock.base_url("salesforce", "sf-oauth")
    flags = (
        "add", "sf-oauth", "--crm", "salesforce", "--account", "sf-oauth", "--auth",
        "oauth-refresh", "--client-id", "client-sf-oauth", "--client-secret",
        "secret-sf-oauth", "--refresh-token", "refresh-sf-oauth", "--login-url", base,
    )  # fmt: skip
    res = run(database_url, redis_url, *flags, "--settings", 'field_map={"company": "Nope__c"}')
    assert res.exit_code == 1
    assert (
        "✓ authentication: OAuth refresh-token flow: access token obtained, instance " + base
        in (lines(res))
    )
    assert "✗ mapped fields: missing: Nope__c" in lines(res)
    res = run(database_url, redis_url, *flags)
    assert res.exit_code == 0, res.output
    assert "auth oauth-refresh, client client-sf-oauth, refresh token …auth" in res.output
    for secret in ("secret-sf-oauth", "refresh-sf-oauth"):
        assert secret not in res.output
    (row,) = fetch_now(database_url, "SELECT base_url, auth, secrets FROM connections")
    assert row["base_url"] == base
    assert "secret-sf-oauth" not in row["secrets"] and "refresh-sf" not in row["auth"]


def test_update_keeps_the_ledger_and_remove_asks_first(
    database_url: str, redis_url: str, threaded_mock: StartThreaded
) -> None:
    mock = threaded_mock(AccountSpec("hubspot", "hs-1", limits=UNLIMITED))
    assert add(database_url, redis_url, mock, "hubspot", "hs-1", "--no-check").exit_code == 0

    async def seed() -> None:
        conn = await asyncpg.connect(database_url)
        try:
            await conn.execute(
                "INSERT INTO sync_state (connection_id, contact_id, external_id, synced_version,"
                " status) VALUES ('hs-1', 'c1', '901', 3, 'synced')"
            )
            await conn.execute(
                "INSERT INTO dead_letters (connection_id, contact_id, version, operation,"
                " error_code, error, http_status, payload, attempts)"
                " VALUES ('hs-1', 'c2', 1, 'create', 'X', 'bad', 400, '{}', 1)"
            )
        finally:
            await conn.close()

    asyncio.run(seed())
    upd = run(
        database_url, redis_url,
        "update", "hs-1", "--rate-limit", "90/10s", "--settings", "batch_size=50",
        "--settings", "max_in_flight=8",
    )  # fmt: skip
    assert upd.exit_code == 0, upd.output
    assert "updated connection hs-1: limits 90/10s, settings" in upd.output
    unset = run(database_url, redis_url, "update", "hs-1", "--unset", "max_in_flight")
    assert unset.exit_code == 0, unset.output
    refused = run(database_url, redis_url, "update", "hs-1", "--settings", "batch_size=500")
    assert refused.exit_code == 1
    assert str(refused.exception) == (
        "--settings batch_size (records per CRM request) must be a whole number from 1 to 100."
    )
    (row,) = fetch_now(database_url, "SELECT rate_limits, settings FROM connections")
    assert row["settings"] == '{"batch_size": 50}'
    assert fetch_now(database_url, "SELECT contact_id FROM sync_state") != []
    assert fetch_now(database_url, "SELECT contact_id FROM dead_letters") != []

    no = CliRunner().invoke(
        app, ["connections", "remove", "hs-1", "--database-url", database_url], input="n\n"
    )
    assert no.exit_code == 1 and "add --yes to confirm" in str(no.exception)  # not a TTY
    assert len(fetch_now(database_url, "SELECT id FROM connections")) == 1
    yes = CliRunner().invoke(
        app, ["connections", "remove", "hs-1", "--yes", "--database-url", database_url]
    )
    assert yes.exit_code == 0, yes.output
    assert fetch_now(database_url, "SELECT contact_id FROM sync_state") == []


def test_jwt_connection_added_from_a_key_file_and_no_secret_listed(
    database_url: str, redis_url: str, threaded_mock: StartThreaded, tmp_path: Path
) -> None:
    pem, cert = rsa_key_pair(traditional=True)
    app_ = OAuthSpec.default("salesforce", "sf-jwt", certificate=cert)
    mock = threaded_mock(
        AccountSpec("salesforce", "sf-jwt", limits=UNLIMITED, static_token=False, oauth=app_)
    )
    key_file = tmp_path / "server.key"
    key_file.write_text(pem)
    base = mock.base_url("salesforce", "sf-jwt")
    res = run(
        database_url, redis_url,
        "add", "sf-jwt", "--crm", "salesforce", "--account", "sf-jwt", "--auth", "jwt",
        "--client-id", "client-sf-jwt", "--username", "integration@sf-jwt.example.com",
        "--private-key", str(key_file), "--login-url", base,
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert lines(res)[0] == (
        f"✓ authentication: JWT bearer flow: access token obtained, instance {base}"
    )
    assert "auth jwt, client client-sf-jwt, user integration@sf-jwt.example.com" in res.output
    assert mock.account_stats("salesforce", "sf-jwt")["auth"]["jwt_grants"] == 1
    missing = run(
        database_url, redis_url, "update", "sf-jwt", "--private-key", str(tmp_path / "nope")
    )
    assert "--private-key" in str(missing.exception) and "cannot read it" in str(missing.exception)
    listed = CliRunner().invoke(
        app, ["connections", "list", "--json", "--database-url", database_url]
    )
    table = CliRunner().invoke(
        app, ["connections", "list", "--database-url", database_url], env={"COLUMNS": "250"}
    )
    body = pem.splitlines()[1]
    for out in (res.output, listed.output, table.output):
        assert body not in out and "PRIVATE KEY" not in out
    assert '"auth": "jwt"' in listed.output and "jwt" in table.output
