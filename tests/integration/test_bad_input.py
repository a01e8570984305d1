"""Bad input is a clear 4xx naming the field, never a 500, and nothing of it is
stored: NUL and lone surrogates in any JSON string, trailing newlines, ids a URL
normaliser would change, bodies over the limit (413 before parsing), and a 422
that quotes a short excerpt only. Real PostgreSQL behind the API."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import orjson
import pytest

from crmsync import connections
from crmsync.capture.csv_import import import_csv
from crmsync.contacts import COMPANY_MAX, EMAIL_MAX, ID_MAX, MAX_BATCH, NAME_MAX, is_id
from crmsync.errors import UserError
from crmsync.settings import Settings
from support import OpenApi

KEY = "test-key"
AUTH = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}


@pytest.fixture
async def api(api_client: OpenApi) -> httpx.AsyncClient:
    return await api_client(api_keys=KEY)


def raw(body: str) -> bytes:
    """A JSON text as a client may send it: escapes kept as written."""
    return body.encode("utf-8", "surrogatepass")


# (name, JSON body of PUT /v1/contacts/c1, the field a 422 must name)
BAD_BODIES = [
    ("NUL in a name", '{"email": "a@example.com", "first_name": "A\\u0000da"}', "first_name"),
    ("NUL in the email", '{"email": "a@exam\\u0000ple.com"}', "email"),
    ("lone surrogate", '{"email": "a@example.com", "last_name": "x\\ud800y"}', "last_name"),
    ("lone low surrogate", '{"email": "a@example.com", "company": "\\udfff"}', "company"),
    ("NUL in the tenant", '{"email": "a@example.com", "tenant": "default\\u0000"}', "tenant"),
    ("email with a newline", '{"email": "a@example.com\\n"}', "email"),
    ("tenant with a newline", '{"email": "a@example.com", "tenant": "acme\\n"}', "tenant"),
    ("id with a newline", '{"email": "a@example.com", "id": "c1\\n"}', "id"),
    ("status with a newline", '{"email": "a@example.com", "status": "active\\n"}', "status"),
]


@pytest.mark.parametrize(
    ("body", "field"), [c[1:] for c in BAD_BODIES], ids=[c[0] for c in BAD_BODIES]
)
async def test_a_bad_string_is_a_422_naming_its_field_and_nothing_is_stored(
    api: httpx.AsyncClient, pg: asyncpg.Connection[Any], body: str, field: str
) -> None:
    resp = await api.put("/v1/contacts/c1", content=raw(body), headers=AUTH)
    assert resp.status_code == 422, resp.text
    assert any(e["loc"][-1] == field for e in resp.json()["detail"]), resp.text
    assert "\x00" not in resp.text
    assert await pg.fetchval("SELECT count(*) FROM contacts") == 0


async def test_a_bad_string_inside_a_batch_names_its_index(
    api: httpx.AsyncClient, pg: asyncpg.Connection[Any]
) -> None:
    body = '{"contacts": [{"id": "a", "email": "a@example.com"}, ' + (
        '{"id": "b", "email": "b@example.com", "first_name": "B\\u0000"}]}'
    )
    resp = await api.post("/v1/contacts:batch", content=raw(body), headers=AUTH)
    assert resp.status_code == 422
    assert [e["loc"] for e in resp.json()["detail"]] == [["body", "contacts", 1, "first_name"]]
    assert await pg.fetchval("SELECT count(*) FROM contacts") == 0


BAD_IDS = [".", "..", "...", "c1%0A", "%2E%2E", "%2E", "a%00b", "x" * (ID_MAX + 1)]


@pytest.mark.parametrize("cid", BAD_IDS)
async def test_ids_a_url_normaliser_would_change_are_refused(
    api: httpx.AsyncClient, pg: asyncpg.Connection[Any], cid: str
) -> None:
    for method in ("PUT", "GET", "DELETE"):
        resp = await api.request(
            method, f"/v1/contacts/{cid}", content=b'{"email": "a@example.com"}', headers=AUTH
        )
        # 422 naming the id; 404 where the router itself resolved the dots away.
        assert resp.status_code in (404, 422), (method, cid, resp.status_code, resp.text)
        assert resp.status_code != 500
    body = orjson.dumps({"contacts": [{"id": httpx.URL(f"/{cid}").path[1:], "email": "a@b.io"}]})
    resp = await api.post("/v1/contacts:batch", content=body, headers=AUTH)
    assert resp.status_code == 422
    assert await pg.fetchval("SELECT count(*) FROM contacts") == 0


@pytest.mark.parametrize(
    ("value", "ok"),
    [("c1", True), ("a.b", True), (".a", True), ("a..", True), (".", False), ("..", False),
     ("....", False), ("", False), ("c1\n", False), ("c\n1", False), ("c 1", False),
     ("x" * ID_MAX, True), ("x" * (ID_MAX + 1), False)],
)  # fmt: skip
def test_the_id_rule(value: str, ok: bool) -> None:
    assert is_id(value) is ok


async def test_a_body_over_the_limit_is_413_before_it_is_parsed(api_client: OpenApi) -> None:
    limit = 64 * 1024
    api = await api_client(api_keys=KEY, api_max_body_bytes=limit)
    big = b"{" + b" " * limit + b"}"  # not even valid JSON: never parsed
    resp = await api.post("/v1/contacts:batch", content=big, headers=AUTH)
    assert resp.status_code == 413 and "CRMSYNC_API_MAX_BODY_BYTES" in resp.text

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted
        for _ in range(limit // 1024 + 2):
            yield b" " * 1024

    resp = await api.post("/v1/contacts:batch", content=chunks(), headers=AUTH)
    assert resp.status_code == 413
    # Without a key, 401 first: nothing is read.
    resp = await api.post("/v1/contacts:batch", content=big)
    assert resp.status_code == 401


async def test_the_largest_batch_fits_the_default_limit(
    api: httpx.AsyncClient, pg: asyncpg.Connection[Any]
) -> None:
    """1000 contacts with every field at its longest, in 4-byte UTF-8 characters."""
    wide = "\U0001d49c"  # MATHEMATICAL SCRIPT CAPITAL A
    local = "x" * 64
    domain = ("d" * 60 + ".") * 3
    email = f"{local}@{domain}{'e' * (EMAIL_MAX - len(local) - 1 - len(domain))}"
    assert len(email) == EMAIL_MAX
    contacts = [
        {
            "id": f"{i:0{ID_MAX}d}",
            "email": email,
            "first_name": wide * NAME_MAX,
            "last_name": wide * NAME_MAX,
            "company": wide * COMPANY_MAX,
            "status": "customer",
            "tenant": "default",
        }
        for i in range(MAX_BATCH)
    ]
    body = orjson.dumps({"contacts": contacts})
    assert len(body) <= Settings().api_max_body_bytes
    resp = await api.post("/v1/contacts:batch", content=body, headers=AUTH)
    assert resp.status_code == 200, resp.text[:300]
    assert await pg.fetchval("SELECT count(*) FROM contacts") == MAX_BATCH


async def test_a_422_quotes_only_a_short_excerpt_of_a_huge_input(api: httpx.AsyncClient) -> None:
    huge = "x" * 1_000_000
    body = orjson.dumps({"email": huge, "first_name": huge})
    resp = await api.put("/v1/contacts/c1", content=body, headers=AUTH)
    assert resp.status_code == 422
    assert len(resp.content) < 2000, len(resp.content)
    fields = {e["loc"][-1] for e in resp.json()["detail"]}
    assert {"email", "first_name"} <= fields
    resp = await api.post(
        "/v1/contacts:batch", content=orjson.dumps({"contacts": huge}), headers=AUTH
    )
    assert resp.status_code == 422 and len(resp.content) < 2000


async def test_a_connection_id_or_tenant_with_a_newline_or_only_dots_is_refused() -> None:
    base = {"crm": "salesforce", "account": "a", "base_url": "https://x.example", "token": "t" * 9}
    for cid, tenant in (("sf\n", "default"), ("sf", "acme\n"), ("..", "default"), ("sf", ".")):
        with pytest.raises(UserError, match="not only dots"):
            connections.parse_connection(id=cid, tenant=tenant, **base)


@pytest.mark.parametrize(
    "url",
    [
        "https://user:pass@acme.my.salesforce.com",
        "https://user@acme.my.salesforce.com",
        "https://:pass@api.hubapi.com",
        "http://sk-live-0123456789abcdef@api.hubapi.com",
    ],
)
def test_a_base_url_with_credentials_is_refused_in_one_sentence(url: str) -> None:
    with pytest.raises(UserError) as caught:
        connections.parse_connection(
            id="sf", crm="salesforce", account="a", base_url=url, token="t" * 9
        )
    message = str(caught.value)
    assert "--base-url must not carry credentials" in message and message.count(".") <= 2
    assert "pass" not in message.replace("password", "") and "sk-live" not in message


def test_a_base_url_that_is_not_one_is_named_without_its_secrets() -> None:
    with pytest.raises(UserError, match="not a valid URL") as caught:
        connections.parse_connection(
            id="sf",
            crm="salesforce",
            account="a",
            base_url="https://u:secret@h:port",
            token="t" * 9,
        )
    assert "secret" not in str(caught.value)


async def test_a_csv_with_a_nul_is_rejected_with_its_line_and_nothing_imported(
    pg: asyncpg.Connection[Any], tmp_path: Path
) -> None:
    path = tmp_path / "contacts.csv"
    path.write_bytes(
        b"id,email,first_name\n"
        b"c1,c1@example.com,Ada\n"
        b"c2,c2@example.com,Gr\x00ace\n"
        b"c3,c3@example.com,Alan\n"
    )
    with pytest.raises(UserError, match=r"line 3: .*NUL.*nothing was imported"):
        await import_csv(pg, path)
    assert await pg.fetchval("SELECT count(*) FROM contacts") == 0
    assert await pg.fetchval("SELECT count(*) FROM outbox") == 0
