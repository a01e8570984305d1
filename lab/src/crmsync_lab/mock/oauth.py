"""The token endpoints, answering as the CRMs' own do.

Salesforce ``POST /services/oauth2/token`` (form-encoded):
- ``grant_type=refresh_token`` with ``client_id``, ``client_secret``,
  ``refresh_token`` -> ``{access_token, signature, scope, instance_url, id,
  token_type, issued_at}`` (``signature``: HMAC-SHA256 of ``id + issued_at``
  keyed with the client secret, base64, as Salesforce signs it);
- ``grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer`` with
  ``assertion``: an RS256 JWT whose signature verifies against the app's
  certificate, ``iss`` = client id, ``sub`` = the username, ``aud`` = the
  login URL the client used (or the mock's root URL or the org's instance
  URL), ``exp`` in the future -> ``{access_token, scope, instance_url, id,
  token_type}``.
Errors: 400 ``{"error", "error_description"}`` (``invalid_client_id``,
``invalid_client``, ``invalid_grant``, ``unsupported_grant_type``).

HubSpot ``POST /oauth/v1/token`` with ``grant_type=refresh_token``,
``client_id``, ``client_secret``, ``refresh_token`` -> ``{token_type,
refresh_token, access_token, expires_in}``; errors 400 ``{"status":
"BAD_REFRESH_TOKEN" | "BAD_CLIENT_ID" | ..., "message", "correlationId"}``.

At the mock's root the endpoint finds the account the way the CRM does: by
refresh token, or by the JWT's client id and username; under an account's
path (``/sf/<org>/services/oauth2/token``, ``/hs/<portal>/oauth/v1/token``)
or on an org's instance port it serves that account alone.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any, Protocol
from urllib.parse import parse_qsl

import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding

from crmsync_lab.mock.auth import Credentials
from crmsync_lab.mock.common import Answer

JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
SF_SCOPE = "api refresh_token"


class Holder(Protocol):
    """An account as the token endpoints see it."""

    creds: Credentials
    org_id: str
    user_id: str


def form(body: bytes, query: dict[str, str]) -> dict[str, str]:
    """The form fields of a token request (body, or the query string as a fallback)."""
    fields = dict(query)
    if body:
        fields.update(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
    return fields


def _sf_error(code: str, description: str) -> Answer:
    return Answer(400, {"error": code, "error_description": description})


def salesforce(
    fields: dict[str, str],
    accounts: Sequence[Holder],
    *,
    now: float,
    login_url: str,
    audiences: Callable[[Holder], set[str]],
    instance_url: Callable[[Holder], str],
) -> tuple[Answer, Holder | None]:
    grant = fields.get("grant_type", "")
    if grant == "refresh_token":
        return _sf_refresh(fields, accounts, now, login_url, instance_url)
    if grant == JWT_BEARER:
        return _sf_jwt(fields, accounts, now, login_url, audiences, instance_url)
    return _sf_error("unsupported_grant_type", "grant type not supported"), None


def _identity(login_url: str, acct: Holder) -> str:
    return f"{login_url}/id/{acct.org_id}/{acct.user_id}"


def _sf_refresh(
    fields: dict[str, str],
    accounts: Sequence[Holder],
    now: float,
    login_url: str,
    instance_url: Callable[[Holder], str],
) -> tuple[Answer, Holder | None]:
    client_id = fields.get("client_id", "")
    apps = [a for a in accounts if a.creds.oauth and a.creds.oauth.client_id == client_id]
    if not client_id or not apps:
        return _sf_error("invalid_client_id", "client identifier invalid"), None
    secret = fields.get("client_secret", "")
    if any(a.creds.oauth and a.creds.oauth.client_secret != secret for a in apps):
        return _sf_error("invalid_client", "invalid client credentials"), None
    token = fields.get("refresh_token", "")
    acct = next((a for a in apps if token and a.creds.refresh_token == token), None)
    if acct is None:
        return _sf_error("invalid_grant", "expired access/refresh token"), None
    identity = _identity(login_url, acct)
    issued_at = str(int(time.time() * 1000))
    signature = base64.b64encode(
        hmac.new(secret.encode(), (identity + issued_at).encode(), hashlib.sha256).digest()
    ).decode()
    payload = {
        "access_token": acct.creds.issue(now, "refresh_grants"),
        "signature": signature,
        "scope": SF_SCOPE,
        "instance_url": instance_url(acct),
        "id": identity,
        "token_type": "Bearer",
        "issued_at": issued_at,
    }
    return Answer(200, payload), acct


def _b64(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def _sf_jwt(
    fields: dict[str, str],
    accounts: Sequence[Holder],
    now: float,
    login_url: str,
    audiences: Callable[[Holder], set[str]],
    instance_url: Callable[[Holder], str],
) -> tuple[Answer, Holder | None]:
    parts = fields.get("assertion", "").split(".")
    try:
        if len(parts) != 3:
            raise ValueError
        header, claims = orjson.loads(_b64(parts[0])), orjson.loads(_b64(parts[1]))
        signature = _b64(parts[2])
        if not isinstance(header, dict) or not isinstance(claims, dict):
            raise ValueError
    except (ValueError, binascii.Error, orjson.JSONDecodeError):
        return _sf_error("invalid_grant", "invalid assertion"), None
    if header.get("alg") != "RS256":
        return _sf_error("invalid_grant", "invalid assertion"), None
    iss, sub = str(claims.get("iss", "")), str(claims.get("sub", ""))
    apps = [a for a in accounts if a.creds.oauth and a.creds.oauth.client_id == iss]
    if not iss or not apps:
        return _sf_error("invalid_client_id", "client identifier invalid"), None
    acct = next((a for a in apps if a.creds.oauth and a.creds.oauth.username == sub), None)
    if acct is None or acct.creds.key is None or acct.creds.refresh_token is None:
        # No such user, no certificate, or the app's authorization was revoked.
        return _sf_error("invalid_grant", "user hasn't approved this consumer"), None
    try:
        acct.creds.key.verify(
            signature,
            f"{parts[0]}.{parts[1]}".encode(),
            padding.PKCS1v15(),
            hashes.SHA256(),
        )
    except InvalidSignature:
        return _sf_error("invalid_grant", "invalid assertion"), None
    if str(claims.get("aud", "")).rstrip("/") not in audiences(acct):
        return _sf_error("invalid_grant", "audience is invalid"), None
    try:
        exp = float(claims.get("exp", 0))  # simple-salesforce sends it as a string
    except (TypeError, ValueError):
        exp = 0.0
    if exp <= time.time():
        return _sf_error("invalid_grant", "expired authorization code"), None
    payload = {
        "access_token": acct.creds.issue(now, "jwt_grants"),
        "scope": SF_SCOPE,
        "instance_url": instance_url(acct),
        "id": _identity(login_url, acct),
        "token_type": "Bearer",
    }
    return Answer(200, payload), acct


def _hs_error(status: str, message: str) -> Answer:
    return Answer(400, {"status": status, "message": message, "correlationId": str(uuid.uuid4())})


def hubspot(
    fields: dict[str, str], accounts: Sequence[Holder], *, now: float
) -> tuple[Answer, Holder | None]:
    if fields.get("grant_type") != "refresh_token":
        return _hs_error("BAD_GRANT_TYPE", "grant_type must be refresh_token"), None
    client_id = fields.get("client_id", "")
    apps = [a for a in accounts if a.creds.oauth and a.creds.oauth.client_id == client_id]
    if not client_id or not apps:
        return _hs_error("BAD_CLIENT_ID", "missing or unknown client id"), None
    token = fields.get("refresh_token", "")
    acct = next((a for a in apps if token and a.creds.refresh_token == token), None)
    if acct is None:
        return _hs_error("BAD_REFRESH_TOKEN", "missing or unknown refresh token"), None
    assert acct.creds.oauth is not None
    if fields.get("client_secret", "") != acct.creds.oauth.client_secret:
        return _hs_error("BAD_CLIENT_SECRET", "missing or invalid client secret"), None
    payload: dict[str, Any] = {
        "token_type": "bearer",
        "refresh_token": token,  # HubSpot's refresh tokens do not rotate
        "access_token": acct.creds.issue(now, "refresh_grants"),
        "expires_in": max(1, round(acct.creds.lifetime)),
    }
    return Answer(200, payload), acct
