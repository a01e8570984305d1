"""What a request's ``Authorization`` header carries, and where it comes from.

A ``TokenSource`` hands each request a ``Credential`` and hears how the CRM took
it. ``StaticToken`` is a bearer token as given; ``crmsync.crm.tokens.SharedToken``
refreshes through the CRM's token endpoint and shares the token between processes.
Kept apart from both so ``crm/http.py`` can hold one without importing the flows.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import NoReturn, Protocol

from crmsync.errors import AuthFailed


@dataclass(frozen=True, slots=True)
class Credential:
    """One access token as requests carry it."""

    token: str
    base_url: str | None = None  # where API calls go (Salesforce's instance_url); None: as set
    gen: int = 0  # its generation in Redis (0: a static token)
    issued: float = 0.0  # epoch seconds
    expires: float | None = None  # epoch seconds; None: unknown, refreshed on a 401

    def fingerprint(self) -> str:
        return hashlib.sha256(self.token.encode()).hexdigest()[:16]


class TokenSource(Protocol):
    """What an adapter asks for the token of each request (see the module)."""

    refreshes: bool

    def cached(self) -> Credential | None:
        """The token to send now without waiting, or None (then ``get``)."""
        ...

    async def get(self) -> Credential: ...

    async def ready(self) -> bool:
        """Wait until a token can be sent; True when that meant waiting."""
        ...

    def succeeded(self, cred: Credential) -> None: ...

    async def rejected(self, cred: Credential, error: AuthFailed) -> NoReturn:
        """A 401 for ``cred``: raises ``TokenReplaced`` or ``AuthFailed``."""
        ...


class StaticToken:
    """A bearer token as given: nothing to refresh."""

    refreshes = False

    def __init__(self, token: str) -> None:
        self.cred = Credential(token)

    def cached(self) -> Credential:
        return self.cred

    async def get(self) -> Credential:
        return self.cred

    async def ready(self) -> bool:
        return False

    def succeeded(self, cred: Credential) -> None:
        pass

    async def rejected(self, cred: Credential, error: AuthFailed) -> NoReturn:
        raise error
