"""The CRMs' official Python clients against ``crmsync mock-crm``, unpatched: only
their own options (simple-salesforce's instance URL, session id and requests
session; hubspot-api-client's host and access token) point them at the mock.

The mock runs as the command a user starts (``crmsync mock-crm --tls``); each
test adds the accounts it needs through the control API.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import jwt
import pytest
import requests
import trustme
from hubspot import HubSpot
from hubspot.crm.contacts import (
    BatchInputSimplePublicObjectBatchInput,
    BatchInputSimplePublicObjectBatchInputForCreate,
    BatchInputSimplePublicObjectBatchInputUpsert,
    BatchInputSimplePublicObjectId,
    BatchReadInputSimplePublicObjectId,
    Filter,
    FilterGroup,
    PublicObjectSearchRequest,
    SimplePublicObjectBatchInput,
    SimplePublicObjectBatchInputForCreate,
    SimplePublicObjectBatchInputUpsert,
    SimplePublicObjectId,
    SimplePublicObjectInput,
    SimplePublicObjectInputForCreate,
)
from hubspot.crm.contacts.exceptions import ApiException
from hubspot.crm.properties import PropertyCreate
from hubspot.crm.properties.exceptions import ApiException as PropertiesApiException
from hubspot.oauth.exceptions import ApiException as OAuthApiException
from simple_salesforce.api import Salesforce, SFType
from simple_salesforce.exceptions import (
    SalesforceExpiredSession,
    SalesforceMalformedRequest,
    SalesforceResourceNotFound,
)


class MockCli:
    def __init__(self, info: dict[str, Any]) -> None:
        self.url: str = info["url"]
        self.ca: str = info["ca_file"]

    def control(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(
            f"{self.url}/_control/{path}",
            data=data,
            method=method,
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.loads(r.read())

    def add(self, crm: str, **spec: Any) -> dict[str, Any]:
        """A fresh account (a unique name) with ``spec``; its view (control.py)."""
        name = f"{crm[:2]}-{uuid.uuid4().hex[:8]}"
        view: dict[str, Any] = self.control(
            "POST", "accounts", {"crm": crm, "account": name, **spec}
        )
        return view

    def stats(self, view: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = self.control("GET", "stats")["accounts"][
            f"{view['crm']}/{view['account']}"
        ]
        return out

    def session(self) -> requests.Session:
        """A requests session that trusts the mock's test CA (the client's own option).
        Not the environment's: REQUESTS_CA_BUNDLE would override ``verify``."""
        s = requests.Session()
        s.trust_env = False
        s.verify = self.ca
        return s


@pytest.fixture(scope="module")
def mock(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MockCli]:
    exe = Path(sys.executable).parent / "crmsync"
    tls_dir = tmp_path_factory.mktemp("tls")
    proc = subprocess.Popen(
        [str(exe), "mock-crm", "--port", "0", "--scenario", "none", "--tls", "--json"],
        stdout=subprocess.PIPE,
        env={
            **os.environ,
            "CRMSYNC_MOCK_LATENCY_MS": "0",
            "CRMSYNC_MOCK_JITTER_MS": "0",
            "CRMSYNC_MOCK_TLS_DIR": str(tls_dir),
        },
    )
    try:
        assert proc.stdout is not None
        info = json.loads(proc.stdout.readline())
        assert info["ca_file"] == str(tls_dir / "ca.pem")
        yield MockCli(info)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()


def salesforce(mock: MockCli, view: dict[str, Any], token: str | None = None) -> Salesforce:
    return Salesforce(
        instance_url=view["instance_url"],
        session_id=token or view["token"],
        session=mock.session(),
        version="60.0",
    )


def contact(sf: Salesforce) -> SFType:
    """``sf.Contact``, typed (simple-salesforce types its attribute lookup as any handler)."""
    handler = sf.Contact
    assert isinstance(handler, SFType)
    return handler


def sf_errors(exc: Exception) -> list[dict[str, Any]]:
    """The error list a simple-salesforce exception carries (typed bytes, holds JSON)."""
    content: list[dict[str, Any]] = cast(Any, exc).content
    return content


def hubspot(view: dict[str, Any], token: str | None = None) -> HubSpot:
    return HubSpot(access_token=token or view["token"], host=view["base_url"])


# -- Salesforce ---------------------------------------------------------------------


def test_simple_salesforce_speaks_to_an_org(mock: MockCli) -> None:
    view = mock.add("salesforce", model="crm", daily_limit=1000)
    assert view["instance_url"].startswith("https://127.0.0.1:")
    sf = salesforce(mock, view)
    made = contact(sf).create(
        {"LastName": "Lovelace", "FirstName": "Ada", "Email": "ada@x.io", "Phone": "+44 1"}
    )
    assert made["success"] and made["id"].startswith("003")
    got = contact(sf).get(made["id"])
    assert (got["Email"], got["Phone"], got["Name"]) == ("ada@x.io", "+44 1", "Ada Lovelace")
    assert contact(sf).update(made["id"], {"Title": "Countess"}) == 204
    assert contact(sf).get(made["id"])["Title"] == "Countess"
    # Upsert by the external id: created, then updated.
    assert contact(sf).upsert("CrmSync_Id__c/c-1", {"LastName": "Hopper", "Email": "g@x.io"}) == 201
    assert contact(sf).upsert("CrmSync_Id__c/c-1", {"MailingCity": "Arlington"}) == 200
    by_ext = contact(sf).get_by_custom_id("CrmSync_Id__c", "c-1")
    assert (by_ext["LastName"], by_ext["MailingCity"]) == ("Hopper", "Arlington")
    # Describe lists the standard fields and the external id with its attributes.
    fields = {f["name"]: f for f in contact(sf).describe()["fields"]}
    assert {"Phone", "Title", "AccountId", "MailingCity", "Company__c", "Status__c"} <= set(fields)
    ext = fields["CrmSync_Id__c"]
    assert ext["externalId"] and ext["unique"] and ext["updateable"] and ext["nillable"]
    assert not fields["LastName"]["nillable"] and not fields["Name"]["updateable"]
    # SOQL: by email (case-insensitive, as Salesforce compares text) and by external id.
    q = sf.query("SELECT Id, Email FROM Contact WHERE Email = 'ADA@x.io'")
    assert q["totalSize"] == 1 and q["records"][0]["Id"] == made["id"]
    q = sf.query_all("SELECT Id, LastName FROM Contact WHERE CrmSync_Id__c = 'c-1' LIMIT 5")
    assert [r["LastName"] for r in q["records"]] == ["Hopper"]
    with pytest.raises(SalesforceMalformedRequest) as bad:
        sf.query("SELECT Nope FROM Contact")
    assert sf_errors(bad.value)[0]["errorCode"] == "INVALID_FIELD"
    # The daily allocation: /limits and the header every answer carries.
    limits = sf.limits()
    assert limits["DailyApiRequests"]["Max"] == 1000
    used = 1000 - limits["DailyApiRequests"]["Remaining"]
    assert sf.api_usage["api-usage"].used == used and sf.api_usage["api-usage"].total == 1000
    # Version discovery needs no session, as on Salesforce.
    versions = mock.session().get(f"{view['instance_url']}/services/data/", timeout=5)
    assert {"version": "60.0", "url": "/services/data/v60.0"}.items() <= versions.json()[2].items()
    assert contact(sf).delete(made["id"]) == 204
    with pytest.raises(SalesforceResourceNotFound):
        contact(sf).get(made["id"])


def test_query_all_follows_the_next_records_url(mock: MockCli) -> None:
    view = mock.add("salesforce", limit="0")
    seeds = [{"email": f"p{i}@x.io", "last_name": f"P{i}"} for i in range(2100)]
    seeded = mock.control("POST", "seed", {"account": view["account"], "contacts": seeds})
    assert seeded[f"salesforce/{view['account']}"]["created"] == 2100
    records = salesforce(mock, view).query_all("SELECT Id, Email FROM Contact")["records"]
    assert len(records) == 2100 and len({r["Id"] for r in records}) == 2100


def _sf_token(mock: MockCli, url: str, **form: str) -> requests.Response:
    return mock.session().post(f"{url}/services/oauth2/token", data=form, timeout=5)


def lifetime(mock: MockCli, view: dict[str, Any], seconds: float) -> None:
    """How long the account's access tokens live from now on."""
    mock.control("POST", "tokens", {"account": view["account"], "token_lifetime": seconds})


def test_salesforce_refresh_token_flow_and_expiry(mock: MockCli) -> None:
    view = mock.add("salesforce", oauth={"token_lifetime": 60}, static_token=False)
    app = view["oauth"]
    form = {
        "grant_type": "refresh_token",
        "client_id": app["client_id"],
        "client_secret": app["client_secret"],
        "refresh_token": app["refresh_token"],
    }
    # Through the org's own (https) URL, and through the mock's root as a login URL.
    for login in (view["instance_url"], mock.url):
        answer = _sf_token(mock, login, **form).json()
        assert answer["instance_url"] == view["instance_url"] and answer["token_type"] == "Bearer"
        expected = hmac.new(
            app["client_secret"].encode(),
            (answer["id"] + answer["issued_at"]).encode(),
            hashlib.sha256,
        ).digest()
        assert base64.b64decode(answer["signature"]) == expected
    assert contact(salesforce(mock, view, answer["access_token"])).create({"LastName": "A"})
    # A token issued while tokens live 0.3 s: used after that, the real 401.
    lifetime(mock, view, 0.3)
    sf = salesforce(mock, view, _sf_token(mock, mock.url, **form).json()["access_token"])
    time.sleep(0.4)
    with pytest.raises(SalesforceExpiredSession) as expired:
        contact(sf).create({"LastName": "After"})
    assert sf_errors(expired.value)[0]["errorCode"] == "INVALID_SESSION_ID"
    lifetime(mock, view, 60)
    fresh = _sf_token(mock, view["instance_url"], **form).json()["access_token"]
    assert contact(salesforce(mock, view, fresh)).create({"LastName": "After"})["success"]
    auth = mock.stats(view)["auth"]
    assert auth["expired_rejections"] == 1 and auth["refresh_grants"] == 4
    # The wrong secret, an unknown client, a revoked refresh token.
    bad = _sf_token(mock, view["instance_url"], **{**form, "client_secret": "nope"})
    assert bad.status_code == 400 and bad.json()["error"] == "invalid_client"
    bad = _sf_token(mock, view["instance_url"], **{**form, "client_id": "nope"})
    assert bad.json() == {
        "error": "invalid_client_id",
        "error_description": "client identifier invalid",
    }
    mock.control("POST", "tokens", {"account": view["account"], "revoke": "all"})
    with pytest.raises(SalesforceExpiredSession):
        contact(salesforce(mock, view, fresh)).create({"LastName": "Revoked"})
    bad = _sf_token(mock, view["instance_url"], **form)
    assert bad.json() == {
        "error": "invalid_grant",
        "error_description": "expired access/refresh token",
    }


def test_salesforce_jwt_bearer_flow(mock: MockCli) -> None:
    ca = trustme.CA(key_type=trustme.KeyType.RSA)
    app_cert = ca.issue_cert("connected-app.example.com", key_type=trustme.KeyType.RSA)
    view = mock.add(
        "salesforce",
        oauth={"certificate": app_cert.cert_chain_pems[0].bytes().decode(), "token_lifetime": 60},
    )
    app = view["oauth"]
    key = app_cert.private_key_pem.bytes()
    login = view["base_url"]  # the login URL a client uses: the org's prefix on the mock

    def assertion(signing_key: bytes = key, **claims: Any) -> str:
        payload = {
            "iss": app["client_id"],
            "sub": app["username"],
            "aud": login,
            "exp": str(int(time.time()) + 180),  # simple-salesforce sends a string
            **claims,
        }
        return jwt.encode(payload, signing_key, algorithm="RS256")

    def token(a: str) -> requests.Response:
        return _sf_token(mock, login, grant_type=JWT_BEARER, assertion=a)

    answer = token(assertion()).json()
    assert answer["instance_url"] == view["base_url"]  # the login URL's own form
    sf = salesforce(mock, {**view, "instance_url": view["instance_url"]}, answer["access_token"])
    assert contact(sf).create({"LastName": "Jwt"})["success"]
    other = trustme.CA(key_type=trustme.KeyType.RSA).issue_cert("x", key_type=trustme.KeyType.RSA)
    refusals = {
        "invalid assertion": assertion(other.private_key_pem.bytes()),
        "audience is invalid": assertion(aud="https://evil.example.com"),
        "expired authorization code": assertion(exp=str(int(time.time()) - 5)),
        "user hasn't approved this consumer": assertion(sub="someone@else.com"),
    }
    for why, bad in refusals.items():
        got = token(bad)
        assert got.status_code == 400 and got.json() == {
            "error": "invalid_grant",
            "error_description": why,
        }, why
    assert token(assertion(iss="unknown-app")).json()["error"] == "invalid_client_id"


JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"


def test_salesforce_duplicate_rule_and_onboarding_shapes(mock: MockCli) -> None:
    view = mock.add("salesforce", duplicate_rule="block")
    mock.control("POST", "seed", {"account": view["account"], "contacts": [{"email": "a@x.io"}]})
    sf = salesforce(mock, view)
    with pytest.raises(SalesforceMalformedRequest) as dup:
        contact(sf).upsert("CrmSync_Id__c/c-9", {"LastName": "A", "Email": "A@x.io"})
    err = sf_errors(dup.value)[0]
    assert (
        err["errorCode"] == "DUPLICATES_DETECTED" and err["message"] == "Use one of these records?"
    )
    match = err["duplicateResult"]["matchResults"][0]["matchRecords"][0]["record"]
    existing = sf.query("SELECT Id FROM Contact WHERE Email = 'a@x.io'")["records"][0]["Id"]
    assert match["Id"] == existing
    # Adopting the existing record: upsert by Email (an idLookup field) sets our id.
    assert contact(sf).upsert("Email/a@x.io", {"CrmSync_Id__c": "c-9", "LastName": "A"}) == 200
    assert contact(sf).get_by_custom_id("CrmSync_Id__c", "c-9")["Id"] == existing
    # Orgs an admin has not finished setting up.
    missing = salesforce(mock, mock.add("salesforce", id_field="missing"))
    assert "CrmSync_Id__c" not in {f["name"] for f in contact(missing).describe()["fields"]}
    with pytest.raises(SalesforceResourceNotFound):
        contact(missing).upsert("CrmSync_Id__c/c-1", {"LastName": "L"})
    plain = salesforce(mock, mock.add("salesforce", id_field="not-external-id"))
    ext = {f["name"]: f for f in contact(plain).describe()["fields"]}["CrmSync_Id__c"]
    assert not ext["externalId"] and not ext["unique"]
    with pytest.raises(SalesforceMalformedRequest) as not_ext:
        contact(plain).upsert("CrmSync_Id__c/c-1", {"LastName": "L"})
    assert sf_errors(not_ext.value)[0]["errorCode"] == "INVALID_FIELD"


# -- HubSpot ---------------------------------------------------------------------------


def test_hubspot_client_basic_batch_and_search(mock: MockCli) -> None:
    view = mock.add("hubspot", model="crm", tier=100)
    client = hubspot(view)
    basic = client.crm.contacts.basic_api
    made = basic.create(
        SimplePublicObjectInputForCreate(
            properties={"email": "ada@x.io", "firstname": "Ada", "lifecyclestage": "lead"}
        )
    )
    got = basic.get_by_id(made.id, properties=["email", "lifecyclestage", "phone"])
    assert got.properties["lifecyclestage"] == "lead" and got.properties["phone"] is None
    by_email = basic.get_by_id("ADA@x.io", id_property="email")
    assert by_email.id == made.id
    basic.update(made.id, SimplePublicObjectInput(properties={"jobtitle": "Countess"}))
    assert basic.get_by_id(made.id, properties=["jobtitle"]).properties["jobtitle"] == "Countess"
    with pytest.raises(ApiException) as conflict:
        basic.create(SimplePublicObjectInputForCreate(properties={"email": "Ada@x.io"}))
    assert conflict.value.status == 409
    assert (
        json.loads(conflict.value.body)["message"]
        == f"Contact already exists. Existing ID: {made.id}"
    )

    batch = client.crm.contacts.batch_api
    created = batch.create(
        BatchInputSimplePublicObjectBatchInputForCreate(
            inputs=[
                SimplePublicObjectBatchInputForCreate(properties={"email": f"b{i}@x.io"})
                for i in range(3)
            ]
        )
    )
    ids = sorted(r.id for r in created.results)
    assert created.status == "COMPLETE" and len(ids) == 3
    read = batch.read(
        BatchReadInputSimplePublicObjectId(
            inputs=[SimplePublicObjectId(id=i) for i in [*ids, "999"]],
            properties=["email"],
            properties_with_history=[],
        )
    )
    assert sorted(r.id for r in read.results) == ids and read.errors[0].context == {"ids": ["999"]}
    updated = batch.update(
        BatchInputSimplePublicObjectBatchInput(
            inputs=[SimplePublicObjectBatchInput(id=i, properties={"company": "Acme"}) for i in ids]
        )
    )
    assert {r.properties["company"] for r in updated.results} == {"Acme"}
    upserted = batch.upsert(
        BatchInputSimplePublicObjectBatchInputUpsert(
            inputs=[
                SimplePublicObjectBatchInputUpsert(
                    id="c-1", id_property="crmsync_id", properties={"email": "c1@x.io"}
                ),
                SimplePublicObjectBatchInputUpsert(
                    id="b0@x.io", id_property="email", properties={"crmsync_id": "c-0"}
                ),
            ]
        )
    )
    assert {(r.properties["crmsync_id"], r.new) for r in upserted.results} == {
        ("c-1", True),
        ("c-0", False),
    }
    found = client.crm.contacts.search_api.do_search(
        PublicObjectSearchRequest(
            filter_groups=[
                FilterGroup(
                    filters=[Filter(property_name="email", operator="EQ", value="B1@x.io")]
                ),
                FilterGroup(
                    filters=[Filter(property_name="crmsync_id", operator="EQ", value="c-0")]
                ),
            ],
            properties=["email", "crmsync_id"],
            limit=10,
        )
    )
    assert found.total == 2 and {r.properties["email"] for r in found.results} == {
        "b0@x.io",
        "b1@x.io",
    }
    pages, after = [], None
    while True:
        page = basic.get_page(limit=2, after=after, properties=["email"])
        pages.append([r.id for r in page.results])
        if page.paging is None:
            break
        after = page.paging.next.after
    assert sum(len(p) for p in pages) == 5 and len(pages) == 3
    batch.archive(BatchInputSimplePublicObjectId(inputs=[SimplePublicObjectId(id=i) for i in ids]))
    basic.archive(made.id)
    assert mock.stats(view)["records"] == 1  # c-1 alone
    headers = client.crm.contacts.basic_api.get_page_with_http_info(limit=1)[2]
    assert headers["X-HubSpot-RateLimit-Max"] == "100"
    assert headers["X-HubSpot-RateLimit-Interval-Milliseconds"] == "10000"
    assert int(headers["X-HubSpot-RateLimit-Daily"]) == 250_000


def test_hubspot_properties_read_and_create(mock: MockCli) -> None:
    view = mock.add("hubspot", id_field="missing")
    props = hubspot(view).crm.properties.core_api
    names = {p.name: p for p in props.get_all("contacts").results}
    assert {"email", "phone", "company", "jobtitle", "lifecyclestage", "crmsync_status"} <= set(
        names
    )
    assert "crmsync_id" not in names
    assert names["createdate"].modification_metadata.read_only_value
    created = props.create(
        "contacts",
        PropertyCreate(
            name="crmsync_id",
            label="crmsync ID",
            type="string",
            field_type="text",
            group_name="contactinformation",
            has_unique_value=True,
        ),
    )
    assert created.has_unique_value and not created.hubspot_defined
    assert props.get_by_name("contacts", "crmsync_id").has_unique_value
    with pytest.raises(PropertiesApiException) as again:
        props.create(
            "contacts",
            PropertyCreate(
                name="crmsync_id", label="x", type="string", field_type="text", group_name="g"
            ),
        )
    assert again.value.status == 409
    # Now unique, it identifies contacts.
    basic = hubspot(view).crm.contacts.basic_api
    basic.create(SimplePublicObjectInputForCreate(properties={"crmsync_id": "c-1"}))
    assert basic.get_by_id("c-1", id_property="crmsync_id").properties["hs_object_id"]
    loose = hubspot(mock.add("hubspot", id_field="not-unique")).crm.contacts.basic_api
    with pytest.raises(ApiException) as not_unique:
        loose.get_by_id("c-1", id_property="crmsync_id")
    assert not_unique.value.status == 400


def test_hubspot_oauth_refresh_and_expiry(mock: MockCli) -> None:
    view = mock.add("hubspot", oauth=True, static_token=False)
    app = view["oauth"]
    tokens = HubSpot(host=mock.url).oauth.tokens_api  # the root, as api.hubapi.com

    def refresh() -> Any:
        return tokens.create(
            grant_type="refresh_token",
            client_id=app["client_id"],
            client_secret=app["client_secret"],
            refresh_token=app["refresh_token"],
        )

    answer = refresh()
    assert answer.expires_in == 1800 and answer.refresh_token == app["refresh_token"]
    basic = hubspot(view, answer.access_token).crm.contacts.basic_api
    basic.create(SimplePublicObjectInputForCreate(properties={"email": "a@x.io"}))
    lifetime(mock, view, 0.3)
    basic = hubspot(view, refresh().access_token).crm.contacts.basic_api
    time.sleep(0.4)
    with pytest.raises(ApiException) as expired:
        basic.get_page(limit=1)
    body = json.loads(expired.value.body)
    assert expired.value.status == 401 and body["category"] == "EXPIRED_AUTHENTICATION"
    assert body["message"].startswith("The OAuth token used to make this call expired ")
    # The account's own token URL works too (base URL + /oauth/v1/token).
    lifetime(mock, view, 60)
    again = HubSpot(host=view["base_url"]).oauth.tokens_api.create(
        grant_type="refresh_token",
        client_id=app["client_id"],
        client_secret=app["client_secret"],
        refresh_token=app["refresh_token"],
    )
    assert len(hubspot(view, again.access_token).crm.contacts.basic_api.get_page().results) == 1
    with pytest.raises(OAuthApiException) as bad:
        tokens.create(
            grant_type="refresh_token",
            client_id=app["client_id"],
            client_secret=app["client_secret"],
            refresh_token="nope",
        )
    assert bad.value.status == 400 and json.loads(bad.value.body)["status"] == "BAD_REFRESH_TOKEN"
    assert mock.stats(view)["auth"]["expired_rejections"] == 1
