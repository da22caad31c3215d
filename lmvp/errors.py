"""The one exception hierarchy of the client: every error says what happened and what to do."""

from __future__ import annotations

__all__ = [
    "AuthenticationError",
    "ConfigurationError",
    "Conflict",
    "IntegrityError",
    "InvalidRef",
    "LMVPError",
    "NotCached",
    "NotFound",
    "PermissionDenied",
    "ProtocolError",
    "RequestError",
    "ServerUnavailable",
]


class LMVPError(Exception):
    """Base of every error raised by `lmvp`.

    `message` is a sentence for the user (it is also `str(error)`); `code` is the server's
    machine-readable error code when the server sent one; `status` its HTTP status.
    """

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        status: int | None = None,
        details: dict[str, object] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.status = status
        self.details = details or {}


class ConfigurationError(LMVPError):
    """No server is configured, or the configuration is unusable."""


class AuthenticationError(LMVPError):
    """The server does not accept the credentials (wrong password, expired or revoked token)."""


class PermissionDenied(LMVPError):
    """Logged in, but your role in the project does not allow this."""


class NotFound(LMVPError):
    """No such project, model, version, alias or file (or you are not a member)."""


class Conflict(LMVPError):
    """The change collides with another (a version landed first, a name is taken...)."""


class IntegrityError(LMVPError):
    """Bytes do not match their sha256: a damaged transfer, cache or file."""


class ProtocolError(IntegrityError):
    """The server's reply breaks the protocol: a name, number, path, hash or size that the
    server's own rules do not allow (a hostile server, or a reply changed on its way). Nothing
    of it is written; a kind of `IntegrityError`, since what arrived cannot be trusted."""


class ServerUnavailable(LMVPError):
    """The server could not be reached, or kept failing, after retries."""


class RequestError(LMVPError):
    """The server refused the request as malformed (a 4xx not covered above)."""


class InvalidRef(LMVPError, ValueError):
    """A model reference that cannot be parsed."""


class NotCached(LMVPError):
    """Offline, and the cache does not hold what was asked for."""
