"""How a connection authenticates, and the CRMs' token endpoints.

Three kinds (``Auth.kind``):

- ``bearer``: a static token (a HubSpot private-app token, a Salesforce session);
- ``oauth-refresh``: OAuth 2.0 refresh-token grant. Salesforce at ``login_url`` +
  ``/services/oauth2/token`` (its answer's ``instance_url`` is where API calls go),
  HubSpot at the base URL + ``/oauth/v1/token`` (``expires_in``; a refresh token in
  the answer that differs from ours replaces it);
- ``jwt`` (Salesforce): the JWT bearer grant, an RS256 assertion signed with the
  connected app's private key (``iss`` client id, ``sub`` username, ``aud`` the
  login URL, ``exp`` under 3 minutes ahead).

What is not secret (kind, client id, username, login URL, ``rev``) is ``Auth``, stored in
the ``auth`` column; the secrets (``token``, ``client_secret``, ``refresh_token``,
``private_key``) are the sealed JSON of ``crmsync.vault``. This module only speaks
to the token endpoints; sharing the access token between processes is
``crm/tokens.py``.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any
from urllib.parse import urlencode, urlsplit

import aiohttp
import orjson
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from crmsync.crm.answer import loads
from crmsync.crm.http import base_of, call
from crmsync.errors import AuthFailed, Retryable, TokenRefused, UserError

KINDS = ("bearer", "oauth-refresh", "jwt")
REFRESHING = frozenset({"oauth-refresh", "jwt"})
SALESFORCE_LOGIN_URL = "https://login.salesforce.com"
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
JWT_LIFETIME_S = 170  # Salesforce accepts an assertion that expires within 3 minutes
# What every pause caused by credentials starts with: `connections update` with new
# credentials resumes such a pause (and only such a one).
AUTH_PAUSE = "CRM rejected the token"
# The secrets each kind needs (beside the non-secret Auth fields).
SECRETS: dict[str, tuple[str, ...]] = {
    "bearer": ("token",),
    "oauth-refresh": ("client_secret", "refresh_token"),
    "jwt": ("private_key",),
}


@dataclass(frozen=True, slots=True)
class Auth:
    """The non-secret half of a connection's credentials."""

    kind: str = "bearer"
    client_id: str = ""
    username: str = ""  # jwt: the Salesforce user the assertion names
    login_url: str = ""  # Salesforce: where the token endpoint is (default login.salesforce.com)
    # A random name of the credentials, new whenever an operator sets them: a token
    # cached from other credentials is never used, and a worker still holding old
    # ones cannot pause the connection for their failure.
    rev: str = ""

    @property
    def refreshes(self) -> bool:
        return self.kind in REFRESHING

    def to_json(self) -> dict[str, str]:
        return {k: v for k, v in asdict(self).items() if v}

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None) -> Auth:
        data = data or {}
        return cls(
            kind=str(data.get("kind") or "bearer"),
            client_id=str(data.get("client_id") or ""),
            username=str(data.get("username") or ""),
            login_url=str(data.get("login_url") or ""),
            rev=str(data.get("rev") or ""),
        )


def token_url(crm: str, auth: Auth, base_url: str) -> str:
    """Where the connection's token endpoint is."""
    if crm == "salesforce":
        return f"{base_of(auth.login_url or SALESFORCE_LOGIN_URL)}/services/oauth2/token"
    return f"{base_of(base_url)}/oauth/v1/token"


def hint(auth: Auth, secrets: Mapping[str, str]) -> str | None:
    """The secret whose last 4 characters users see (``token_hint``)."""
    if auth.kind == "oauth-refresh":
        return secrets.get("refresh_token")
    if auth.kind == "jwt":
        return None  # the last characters of a PEM key say nothing
    return secrets.get("token")


def auth_pause_reason(error: AuthFailed) -> str:
    """Why a connection is paused for its credentials, the CRM's own reason last."""
    if isinstance(error, TokenRefused):
        code = f" {error.code}" if error.code else ""
        return f"{AUTH_PAUSE} (token endpoint: {error.status}{code}): {error.message}"
    said = error.message
    if error.code and not said.startswith(error.code):
        said = f"{error.code}: {said}"
    return f"{AUTH_PAUSE} (401): {said}"


def is_auth_pause(reason: str | None) -> bool:
    return bool(reason) and str(reason).startswith(AUTH_PAUSE)


# -- the token endpoints ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Grant:
    """A token endpoint's answer."""

    access_token: str
    expires_in: float | None = None  # seconds; None: the CRM does not say (Salesforce)
    instance_url: str | None = None  # Salesforce: the org's API host
    refresh_token: str | None = None  # a new refresh token that replaces ours


def load_private_key(pem: str, *, what: str = "--private-key") -> rsa.RSAPrivateKey:
    """The RSA key of a PEM text; UserError naming ``what`` when it is not one."""
    try:
        key = serialization.load_pem_private_key(pem.encode(), password=None)
    except (ValueError, TypeError) as exc:
        reason = "it is encrypted" if isinstance(exc, TypeError) else "it does not parse"
        raise UserError(
            f"{what} must be an unencrypted PEM RSA private key ({reason}); "
            "e.g. `openssl genrsa -out server.key 2048`"
        ) from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise UserError(f"{what} must hold an RSA key: Salesforce's JWT flow signs with RS256")
    return key


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def jwt_assertion(
    *, client_id: str, username: str, audience: str, private_key: str, now: float
) -> str:
    """The RS256 assertion of Salesforce's JWT bearer flow."""
    key = load_private_key(private_key, what="the connection's private key")
    header = _b64url(orjson.dumps({"alg": "RS256"}))
    claims = {
        "iss": client_id,
        "sub": username,
        "aud": audience.rstrip("/"),
        "exp": int(now) + JWT_LIFETIME_S,
    }
    signing_input = f"{header}.{_b64url(orjson.dumps(claims))}"
    signature = key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
    return f"{signing_input}.{_b64url(signature)}"


def token_form(
    crm: str, auth: Auth, secrets: Mapping[str, str], *, now: float, refresh_token: str | None
) -> dict[str, str]:
    """The form of the token request: a refresh grant, or Salesforce's JWT grant."""
    if auth.kind == "jwt":
        audience = auth.login_url or SALESFORCE_LOGIN_URL
        assertion = jwt_assertion(
            client_id=auth.client_id,
            username=auth.username,
            audience=audience,
            private_key=secrets.get("private_key", ""),
            now=now,
        )
        return {"grant_type": JWT_BEARER, "assertion": assertion}
    return {
        "grant_type": "refresh_token",
        "client_id": auth.client_id,
        "client_secret": secrets.get("client_secret", ""),
        "refresh_token": refresh_token or secrets.get("refresh_token", ""),
    }


def parse_grant(crm: str, status: int, body: Any, *, refresh_token: str | None) -> Grant:
    """A token endpoint's answer: the grant, ``TokenRefused`` with the endpoint's
    reason (400/401/403: the credentials are wrong or revoked), else ``Retryable``."""
    if status == 200 and isinstance(body, dict) and isinstance(body.get("access_token"), str):
        expires = body.get("expires_in")
        instance = body.get("instance_url")
        if instance is not None and (
            not isinstance(instance, str) or urlsplit(instance).scheme not in ("http", "https")
        ):
            raise Retryable(f"the token endpoint's instance_url is not a URL: {instance!r}")
        rotated = body.get("refresh_token")
        if not isinstance(rotated, str) or rotated == refresh_token:
            rotated = None
        return Grant(
            access_token=body["access_token"],
            expires_in=float(expires) if isinstance(expires, int | float) and expires > 0 else None,
            instance_url=instance.rstrip("/") if isinstance(instance, str) else None,
            refresh_token=rotated,
        )
    if status in (400, 401, 403) and isinstance(body, dict):
        # Salesforce: {"error", "error_description"}; HubSpot: {"status", "message"}.
        code = body.get("error") or body.get("status") or body.get("category")
        message = body.get("error_description") or body.get("message") or f"HTTP {status}"
        raise TokenRefused(str(message), status=status, code=str(code) if code else None)
    if status == 200:
        raise Retryable("the token endpoint answered 200 without an access_token", status=status)
    raise Retryable(f"the token endpoint answered HTTP {status}", status=status)


async def request_token(
    session: aiohttp.ClientSession,
    crm: str,
    auth: Auth,
    secrets: Mapping[str, str],
    base_url: str,
    *,
    limit: aiohttp.ClientTimeout,
    now: float,
    refresh_token: str | None = None,
) -> Grant:
    """One call of the connection's token endpoint (``refresh_token``: a newer one
    than the secrets hold, e.g. rotated by another process)."""
    form = token_form(crm, auth, secrets, now=now, refresh_token=refresh_token)
    used = form.get("refresh_token")
    status, _, raw = await call(
        session,
        "POST",
        token_url(crm, auth, base_url),
        headers={
            "Content-Type": "application/x-www-form-urlencoded",
            "Accept": "application/json",
        },
        body=urlencode(form).encode(),
        limit=limit,
    )
    return parse_grant(crm, status, loads(raw), refresh_token=used)
