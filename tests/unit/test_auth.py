"""The credential kinds and the token endpoints' wire formats (pure): the JWT
assertion, token answers and refusals of both CRMs, the flags each kind takes,
pause reasons, and what users may see of the secrets."""

from __future__ import annotations

import base64
from typing import Any

import orjson
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from crmsync import connections, redact
from crmsync.crm.auth import (
    JWT_BEARER,
    Auth,
    Grant,
    auth_pause_reason,
    is_auth_pause,
    jwt_assertion,
    parse_grant,
    token_form,
    token_url,
)
from crmsync.crm.http import auth_error
from crmsync.errors import AuthFailed, Retryable, TokenRefused, UserError

KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
PEM = KEY.private_bytes(
    serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
).decode()


def _part(text: str) -> Any:
    return orjson.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))


def test_jwt_assertion_is_rs256_with_salesforces_claims() -> None:
    token = jwt_assertion(
        client_id="3MVG9",
        username="sync@acme.com",
        audience="https://login.salesforce.com/",
        private_key=PEM,
        now=1_700_000_000.4,
    )
    header, claims, signature = token.split(".")
    assert _part(header) == {"alg": "RS256"}
    assert _part(claims) == {
        "iss": "3MVG9",
        "sub": "sync@acme.com",
        "aud": "https://login.salesforce.com",
        "exp": 1_700_000_170,  # under the 3 minutes Salesforce accepts
    }
    KEY.public_key().verify(  # raises when the signature does not verify
        base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4)),
        f"{header}.{claims}".encode(),
        padding.PKCS1v15(),
        hashes.SHA256(),
    )


def test_token_requests_of_each_kind() -> None:
    sf = Auth("oauth-refresh", "cid", login_url="https://test.salesforce.com")
    assert token_url("salesforce", sf, "https://x") == (
        "https://test.salesforce.com/services/oauth2/token"
    )
    assert token_url("salesforce", Auth("jwt", "cid"), "https://x") == (
        "https://login.salesforce.com/services/oauth2/token"
    )
    assert token_url("hubspot", Auth("oauth-refresh", "c"), "https://api.hubapi.com/") == (
        "https://api.hubapi.com/oauth/v1/token"
    )
    secrets = {"client_secret": "s", "refresh_token": "r0"}
    hs = Auth("oauth-refresh", "c")
    assert token_form("hubspot", hs, secrets, now=0, refresh_token=None) == {
        "grant_type": "refresh_token",
        "client_id": "c",
        "client_secret": "s",
        "refresh_token": "r0",
    }
    rotated = token_form("hubspot", hs, secrets, now=0, refresh_token="r1")
    assert rotated["refresh_token"] == "r1"
    jwt = token_form(
        "salesforce", Auth("jwt", "cid", "u@x.com"), {"private_key": PEM}, now=0, refresh_token=None
    )
    assert (
        jwt["grant_type"] == JWT_BEARER
        and _part(jwt["assertion"].split(".")[1])["sub"] == "u@x.com"
    )


GRANTS: list[tuple[str, int, Any, Grant | type[Exception], str | None]] = [
    (
        "salesforce",
        200,
        {
            "access_token": "00Dx!AQ",
            "instance_url": "https://acme.my.salesforce.com/",
            "id": "https://login.salesforce.com/id/00Dx/005x",
            "token_type": "Bearer",
            "issued_at": "1700000000000",
            "signature": "c2ln",
        },
        Grant("00Dx!AQ", None, "https://acme.my.salesforce.com", None),
        None,
    ),
    (
        "hubspot",
        200,
        {"token_type": "bearer", "refresh_token": "r0", "access_token": "CN1", "expires_in": 1800},
        Grant("CN1", 1800.0, None, None),  # the same refresh token: nothing rotated
        None,
    ),
    (
        "hubspot",
        200,
        {"refresh_token": "r1", "access_token": "CN2", "expires_in": 1800},
        Grant("CN2", 1800.0, None, "r1"),
        None,
    ),
    (
        "salesforce",
        400,
        {"error": "invalid_grant", "error_description": "expired access/refresh token"},
        TokenRefused,
        "invalid_grant",
    ),
    (
        "salesforce",
        400,
        {"error": "invalid_client_id", "error_description": "client identifier invalid"},
        TokenRefused,
        "invalid_client_id",
    ),
    (
        "hubspot",
        400,
        {"status": "BAD_REFRESH_TOKEN", "message": "missing or unknown refresh token"},
        TokenRefused,
        "BAD_REFRESH_TOKEN",
    ),
    ("hubspot", 503, None, Retryable, None),
    ("salesforce", 200, {"error": "odd"}, Retryable, None),
    ("salesforce", 200, {"access_token": "t", "instance_url": "acme"}, Retryable, None),
    ("salesforce", 502, "<html>proxy</html>", Retryable, None),
]


@pytest.mark.parametrize(("crm", "status", "body", "expected", "code"), GRANTS)
def test_token_answers_and_refusals(
    crm: str, status: int, body: Any, expected: Grant | type[Exception], code: str | None
) -> None:
    if isinstance(expected, Grant):
        assert parse_grant(crm, status, body, refresh_token="r0") == expected
        return
    with pytest.raises(expected) as exc:
        parse_grant(crm, status, body, refresh_token="r0")
    if code is not None:
        assert isinstance(exc.value, TokenRefused) and exc.value.code == code


def test_pause_reasons_carry_the_crms_own_and_are_recognised() -> None:
    sf = auth_error(
        401, [{"message": "Session expired or invalid", "errorCode": "INVALID_SESSION_ID"}]
    )
    assert auth_pause_reason(sf) == (
        "CRM rejected the token (401): INVALID_SESSION_ID: Session expired or invalid"
    )
    hs = auth_error(
        401, {"status": "error", "message": "expired", "category": "EXPIRED_AUTHENTICATION"}
    )
    assert (hs.code, hs.message) == ("EXPIRED_AUTHENTICATION", "expired")
    refused = TokenRefused("user hasn't approved this consumer", status=400, code="invalid_grant")
    reason = auth_pause_reason(refused)
    assert reason == (
        "CRM rejected the token (token endpoint: 400 invalid_grant): "
        "user hasn't approved this consumer"
    )
    assert is_auth_pause(reason) and is_auth_pause(auth_pause_reason(AuthFailed("x", status=401)))
    assert not is_auth_pause("paused by operator") and not is_auth_pause(None)


BASE: dict[str, Any] = {"id": "c1", "crm": "salesforce", "account": "acme", "base_url": None}

# (flags, the flag the refusal names)
BAD_FLAGS: list[tuple[dict[str, Any], str]] = [
    ({"auth": "basic"}, "--auth"),
    ({"auth": "bearer"}, "--token must not be empty"),
    ({"auth": "bearer", "token": "t", "base_url": "https://x", "client_id": "c"}, "--client-id"),
    ({"auth": "oauth-refresh", "client_id": "c", "client_secret": "s"}, "--refresh-token"),
    (
        {
            "auth": "oauth-refresh",
            "client_id": "c",
            "client_secret": "s",
            "refresh_token": "r",
            "token": "t",
        },
        "--token does not apply to --auth oauth-refresh",
    ),
    (
        {
            "auth": "oauth-refresh",
            "crm": "hubspot",
            "client_id": "c",
            "client_secret": "s",
            "refresh_token": "r",
            "login_url": "https://x",
            "base_url": "https://api.hubapi.com",
        },
        "--login-url does not apply",
    ),
    (
        {
            "auth": "oauth-refresh",
            "crm": "hubspot",
            "client_id": "c",
            "client_secret": "s",
            "refresh_token": "r",
        },
        "--base-url must be given",
    ),
    ({"auth": "jwt", "crm": "hubspot", "client_id": "c"}, "--auth jwt is Salesforce's"),
    ({"auth": "jwt", "client_id": "c", "username": "u"}, "--private-key must not be empty"),
    (
        {"auth": "jwt", "client_id": "c", "username": "u", "private_key": "not a key"},
        "--private-key must be an unencrypted PEM RSA private key",
    ),
    (
        {
            "auth": "oauth-refresh",
            "client_id": "c",
            "client_secret": "s",
            "refresh_token": "r",
            "login_url": "login.salesforce.com",
        },
        "--login-url 'login.salesforce.com' must be an http:// or https:// URL",
    ),
]


@pytest.mark.parametrize(("flags", "named"), BAD_FLAGS)
def test_each_kind_takes_its_own_flags(flags: dict[str, Any], named: str) -> None:
    with pytest.raises(UserError) as exc:
        connections.parse_connection(**{**BASE, **flags})
    assert named in str(exc.value)


def test_oauth_connections_keep_secrets_sealed_apart_and_show_a_hint() -> None:
    redact.forget_all()
    c = connections.parse_connection(
        **BASE,
        auth="oauth-refresh",
        client_id="3MVG9",
        client_secret="cs-0123456789",
        refresh_token="5Aep861.refresh-wxyz",
    )
    # Salesforce without --login-url: login.salesforce.com, also the base until instance_url.
    assert c.base_url == c.auth.login_url == "https://login.salesforce.com"
    assert c.secrets == {"client_secret": "cs-0123456789", "refresh_token": "5Aep861.refresh-wxyz"}
    assert "cs-0123456789" not in orjson.dumps(c.auth.to_json()).decode()
    assert c.token_hint == "…wxyz" and c.auth.rev and "secret" not in repr(c)
    j = connections.parse_connection(
        **BASE, auth="jwt", client_id="3MVG9", username="u@acme.com", private_key=PEM
    )
    assert j.token_hint == "…" and j.secrets == {"private_key": PEM.strip()}
    assert Auth.from_json(j.auth.to_json()) == j.auth
