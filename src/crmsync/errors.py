"""The error hierarchy every component speaks.

CRM outcomes map onto ``Retryable``, ``Permanent`` and ``RateLimited``; user
mistakes are ``UserError`` and end in one clear sentence, never a traceback.
"""

from __future__ import annotations


class CrmSyncError(Exception):
    """Base of every crmsync error."""


class UserError(CrmSyncError):
    """Something the user can fix: bad config, bad input, unknown connection."""


class CrmError(CrmSyncError):
    """An answer (or no answer) from a CRM that was not a success."""

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code


class Retryable(CrmError):
    """5xx, timeout, connection error: try again later; counts for the breaker."""


class Malformed(Retryable):
    """An answer that does not say what happened: a 2xx that does not confirm the
    record (wrong types, not JSON, the record not named), a redirect, a body over
    the size cap. The CRM misbehaved: retried, and a breaker failure."""


class Unhandled(Retryable):
    """crmsync could not handle a send or a claim (a bug met an unusual case):
    retried and dead-lettered like any error, but not the CRM's fault, so not a
    breaker failure."""


class Permanent(CrmError):
    """Other 4xx: retrying the same payload will not help; dead-letter it."""


class AuthFailed(Permanent):
    """401: the token is bad; pause the connection until an operator resumes it."""


class TokenRefused(AuthFailed):
    """The CRM's token endpoint refused the connection's credentials (a revoked or
    expired refresh token, a wrong client secret, an unapproved JWT user): pause."""


class TokenReplaced(AuthFailed):
    """A 401 for an access token that is no longer the connection's current one
    (it expired and was, or is being, replaced): the request goes back to the queue
    to be sent with the new token; not an attempt, no pause."""


class RateLimited(CrmError):
    """429 / REQUEST_LIMIT_EXCEEDED: wait ``retry_after`` seconds; not an attempt."""

    def __init__(
        self, message: str, *, retry_after: float, status: int | None = 429, code: str | None = None
    ) -> None:
        super().__init__(message, status=status, code=code)
        self.retry_after = retry_after


class CircuitOpen(CrmSyncError):
    """The breaker refuses sends to this connection or CRM for now."""

    def __init__(self, scope: str, retry_in: float) -> None:
        super().__init__(f"circuit open for {scope}; next probe in {retry_in:.1f}s")
        self.scope = scope
        self.retry_in = retry_in
