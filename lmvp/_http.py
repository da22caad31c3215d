"""HTTP plumbing shared by the client: one `httpx.Client` per server, bearer auth, timeouts,
retries with exponential backoff and full jitter (honouring `Retry-After`), and the mapping of
the server's `{"error": {"code", "message"}}` bodies onto `lmvp.errors`."""

from __future__ import annotations

import email.utils
import logging
import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import httpx

from lmvp._version import __version__
from lmvp.errors import (
    AuthenticationError,
    Conflict,
    IntegrityError,
    LMVPError,
    NotFound,
    PermissionDenied,
    RequestError,
    ServerUnavailable,
)
from lmvp.throttle import Throttle

log = logging.getLogger(__name__)
T = TypeVar("T")

API_PREFIX = "/api/v1"
_IDEMPOTENT = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS"})
_RETRY_STATUS = frozenset({429, 500, 502, 503, 504})
DEFAULT_TIMEOUT = httpx.Timeout(30.0, connect=10.0)


class RetryPolicy:
    """Exponential backoff with full jitter: attempt n waits up to base * 2**n (capped)."""

    def __init__(self, attempts: int = 5, base: float = 0.25, cap: float = 20.0) -> None:
        self.attempts = attempts
        self.base = base
        self.cap = cap

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        if retry_after is not None:
            return min(retry_after, 300.0)
        return random.uniform(0, min(self.cap, self.base * 2**attempt))  # noqa: S311


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a `Retry-After` header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    if value.strip().isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def error_from_response(response: httpx.Response, server: str) -> LMVPError:
    """The `LMVPError` for a failed response, carrying the server's own message."""
    status = response.status_code
    code, message = None, ""
    details: dict[str, object] = {}
    try:
        body = response.json()
        err = body.get("error", {}) if isinstance(body, dict) else {}
        code, message = err.get("code"), err.get("message", "")
        details = err.get("details") or {}
    except (ValueError, AttributeError):
        message = response.text[:200]
    message = message or f"HTTP {status} {response.reason_phrase}"
    kwargs: dict[str, Any] = {"code": code, "status": status, "details": details}
    if status == 401:
        if "lmvp login" not in message:
            message += f" (log in with `lmvp login {server}` or set LMVP_TOKEN)"
        return AuthenticationError(message, **kwargs)
    if status == 403:
        return PermissionDenied(message, **kwargs)
    if status == 404:
        return NotFound(message, **kwargs)
    if status == 409:
        return Conflict(message, **kwargs)
    if status == 460:
        return IntegrityError(message, **kwargs)
    if status >= 500:
        return ServerUnavailable(f"server {server} failed: {message}", **kwargs)
    return RequestError(message, **kwargs)


class HTTP:
    """A connection to one LMVP server; thread-safe (httpx pools connections)."""

    def __init__(
        self,
        server: str,
        token: str | None,
        *,
        timeout: httpx.Timeout = DEFAULT_TIMEOUT,
        retry: RetryPolicy | None = None,
    ) -> None:
        self.server = server.rstrip("/")
        self.token = token
        self.retry = retry or RetryPolicy()
        # Paces (and can pause) the bytes of uploads; see `lmvp.throttle.Throttle`.
        self.throttle: Throttle | None = None
        headers = {"User-Agent": f"lmvp/{__version__}"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self.client = httpx.Client(
            base_url=self.server + API_PREFIX,
            headers=headers,
            timeout=timeout,
            limits=httpx.Limits(max_connections=32, max_keepalive_connections=16),
        )

    def close(self) -> None:
        self.client.close()

    def request(
        self,
        method: str,
        path: str,
        *,
        ok: tuple[int, ...] = (200, 201, 204),
        idempotent: bool | None = None,
        **kwargs: Any,
    ) -> httpx.Response:
        """Send a request, retrying transient failures; raise the mapped error otherwise.

        Non-idempotent requests (POST, PATCH) are retried only when the request never left
        (connection refused), unless the caller says `idempotent=True` (an idempotency key).
        """
        safe = method.upper() in _IDEMPOTENT if idempotent is None else idempotent
        return self.with_retries(lambda: self._send(method, path, ok, kwargs), safe=safe)

    def json(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self.request(method, path, **kwargs)
        return response.json() if response.content else None

    def with_retries(self, attempt: Callable[[], T], *, safe: bool = True) -> T:
        """Run `attempt`, retrying connection failures (all, if `safe`) and 429/5xx answers."""
        last: Exception | None = None
        for n in range(self.retry.attempts):
            try:
                return attempt()
            except _Retryable as exc:
                last = exc.error
                if n + 1 == self.retry.attempts:
                    break
                wait = self.retry.delay(n, exc.retry_after)
                log.info("retrying in %.1fs after: %s", wait, exc.error)
                time.sleep(wait)
            except httpx.TransportError as exc:
                unsent = isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout)
                last = exc
                if not (safe or unsent) or n + 1 == self.retry.attempts:
                    break
                wait = self.retry.delay(n)
                log.info("retrying in %.1fs after: %s", wait, exc)
                time.sleep(wait)
        if isinstance(last, LMVPError):
            raise last
        raise ServerUnavailable(
            f"cannot reach the LMVP server at {self.server} ({last}): check that it is running "
            "and the address is right (LMVP_SERVER or `lmvp login SERVER`)"
        ) from last

    @contextmanager
    def stream(self, method: str, path: str, **kwargs: Any) -> Iterator[httpx.Response]:
        """A streamed response (no retries: the caller resumes with Range)."""
        with self.client.stream(method, path, **kwargs) as response:
            if response.status_code >= 400:
                response.read()
                raise error_from_response(response, self.server)
            yield response

    def _send(
        self, method: str, path: str, ok: tuple[int, ...], kwargs: dict[str, Any]
    ) -> httpx.Response:
        response = self.client.request(method, path, **kwargs)
        if response.status_code in ok or response.status_code < 300:
            return response
        error = error_from_response(response, self.server)
        if response.status_code in _RETRY_STATUS:
            raise _Retryable(error, parse_retry_after(response.headers.get("retry-after")))
        raise error


class _Retryable(Exception):
    def __init__(self, error: LMVPError, retry_after: float | None) -> None:
        super().__init__(str(error))
        self.error = error
        self.retry_after = retry_after
