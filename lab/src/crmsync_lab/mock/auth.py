"""Who may call one mock account: a static bearer token and the access tokens it issued.

A static token (``token-<name>`` unless set) works for ever, as a HubSpot
private-app token or a Salesforce session pasted by hand does; it can be
turned off (``static_token: false``) so only OAuth works. Access tokens come
from the token endpoints (oauth.py) and expire ``token_lifetime`` real seconds
after they were issued: using one later gets the CRM's 401 (Salesforce
``INVALID_SESSION_ID``, HubSpot ``EXPIRED_AUTHENTICATION`` naming how long ago
it expired). The control API can revoke every access token (and the refresh
token), change the lifetime, or install a new refresh token.
"""

from __future__ import annotations

import secrets
from collections import Counter, deque
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from crmsync_lab.mock.config import AccountSpec

MAX_KEPT = 10_000  # issued tokens remembered; older expired ones are forgotten first


@dataclass(frozen=True, slots=True)
class Denial:
    reason: str  # "invalid" | "expired"
    expired_for: float = 0.0  # seconds since an expired token's end


def public_key(pem: str) -> RSAPublicKey:
    """The RSA key of a PEM certificate or public key; a ValueError says what is wrong."""
    data = pem.encode()
    try:
        key: Any = (
            x509.load_pem_x509_certificate(data).public_key()
            if b"CERTIFICATE" in data
            else load_pem_public_key(data)
        )
    except ValueError as exc:
        raise ValueError(
            f"oauth certificate is not a PEM certificate or public key ({exc})"
        ) from None
    if not isinstance(key, RSAPublicKey):
        raise ValueError("oauth certificate must hold an RSA key (JWT bearer signs with RS256)")
    return key


class Credentials:
    def __init__(self, spec: AccountSpec, prefix: str) -> None:
        self.static = f"Bearer {spec.bearer}" if spec.static_token else None
        self.oauth = spec.oauth
        self.lifetime = spec.token_lifetime
        self.prefix = prefix  # what the CRM's tokens look like: "00D...!" or "CN"
        self.refresh_token = spec.oauth.refresh_token if spec.oauth else None
        self.key = (
            public_key(spec.oauth.certificate) if spec.oauth and spec.oauth.certificate else None
        )
        self.issued: dict[str, float] = {}  # "Bearer <token>" -> expiry (monotonic)
        self.counts: Counter[str] = Counter()
        # When tokens were issued (monotonic, the last 200): a test tells one grant
        # per expiry from several clients refreshing the same expiry each.
        self.issued_at: deque[float] = deque(maxlen=200)

    def check(self, header: str | None, now: float) -> Denial | None:
        """None when the Authorization header may call the API now."""
        if header is not None and header == self.static:
            return None
        expiry = self.issued.get(header or "")
        if expiry is None:
            self.counts["invalid_rejections"] += 1
            return Denial("invalid")
        if now >= expiry:
            self.counts["expired_rejections"] += 1
            return Denial("expired", now - expiry)
        return None

    def issue(self, now: float, grant: str) -> str:
        """A new access token, valid for ``lifetime`` seconds from ``now``."""
        if len(self.issued) >= MAX_KEPT:
            oldest = sorted(self.issued.items(), key=lambda kv: kv[1])[: MAX_KEPT // 2]
            for header, _ in oldest:
                del self.issued[header]
        token = self.prefix + secrets.token_urlsafe(32)
        self.issued[f"Bearer {token}"] = now + self.lifetime
        self.counts["issued"] += 1
        self.counts[grant] += 1
        self.issued_at.append(now)
        return token

    def revoke(self, *, refresh: bool) -> int:
        """Invalidate every issued access token (and the refresh token); how many."""
        n = len(self.issued)
        self.issued.clear()
        if refresh:
            self.refresh_token = None
        self.counts["revocations"] += 1
        return n

    def control(self, spec: dict[str, Any]) -> None:
        """``{revoke: "access"|"all", token_lifetime: s, refresh_token: t}``, in that order."""
        revoke = spec.get("revoke")
        if revoke not in (None, "access", "all"):
            raise ValueError("revoke must be access or all")
        if revoke:
            self.revoke(refresh=revoke == "all")
        if "token_lifetime" in spec:
            life = float(spec["token_lifetime"])
            if not life > 0:
                raise ValueError("token_lifetime must be a positive number of seconds")
            self.lifetime = life
        if spec.get("refresh_token"):
            if self.oauth is None:
                raise ValueError("this account has no OAuth app; add it with oauth: true")
            self.refresh_token = str(spec["refresh_token"])

    def view(self) -> dict[str, Any]:
        return {
            "static_token": self.static is not None,
            "oauth": self.oauth is not None,
            "token_lifetime": self.lifetime,
            "tokens_known": len(self.issued),
            "issued_at": [round(t, 3) for t in self.issued_at],
            **{k: self.counts[k] for k in sorted(self.counts)},
        }

    def reset(self) -> None:
        self.counts.clear()
        self.issued_at.clear()
