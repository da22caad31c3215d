"""HTTP plumbing shared by the client: one `httpx.Client` per server, bearer auth, timeouts,
the mapping of the server's `{"error": {"code", "message"}}` bodies onto `lmvp.errors`, and
the client's one retry engine: which answers are worth trying again (`RETRY_STATUS`), and
`Attempts`, exponential backoff with full jitter under a `RetryPolicy`, honouring
`Retry-After`. JSON calls go through `HTTP.request`; the raw transfers of `lmvp.tus` and
`lmvp.cache` count their attempts with the same `Attempts`."""

from __future__ import annotations

import email.utils
import logging
import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, NoReturn, TypeVar

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
# Answers after which a request is tried again: the server is busy (429) or failing (5xx).
# An upload adds two of its own (`lmvp.tus`).
RETRY_STATUS = frozenset({429, 500, 502, 503, 504})
DEFAULT_TIMEOUT = httpx.Timeout(30.0, connect=10.0)


class RetryPolicy:
    """Exponential backoff with full jitter: after failure n (from 0) wait between `floor` and
    base * 2**n seconds (capped), `attempts` tries in all."""

    def __init__(
        self, attempts: int = 5, base: float = 0.25, cap: float = 20.0, *, floor: float = 0.0
    ) -> None:
        self.attempts = attempts
        self.base = base
        self.cap = cap
        self.floor = floor

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait after failure `attempt`: the server's `Retry-After` (at most five
        minutes) when it named one."""
        if retry_after is not None:
            return min(retry_after, 300.0)
        upper = max(self.floor, min(self.cap, self.base * 2**attempt))
        return random.uniform(self.floor, upper)  # noqa: S311


class TransientAnswer(Exception):
    """A failed answer worth trying again after a pause: the server's `error`, and the
    seconds its `Retry-After` asked for."""

    def __init__(self, error: LMVPError, retry_after: float | None) -> None:
        super().__init__(str(error))
        self.error = error
        self.retry_after = retry_after


class Attempts:
    """The failed tries of one operation, counted against a `RetryPolicy`.

    `failed(error)` sleeps before the next try, or raises once the policy is spent: the
    server's own error for an answer (an `LMVPError`), else `ServerUnavailable` with the
    sentence `unreachable(error)` makes. `progressed()` starts the count again: a transfer
    that moved forward has earned its attempts anew.
    """

    def __init__(self, policy: RetryPolicy, unreachable: Callable[[BaseException], str]) -> None:
        self.policy = policy
        self.unreachable = unreachable
        self.count = 0

    def failed(self, error: BaseException, retry_after: float | None = None) -> None:
        """Sleep before the next try (`retry_after` seconds, if the server named them), or
        raise if this was the last one."""
        if self.count + 1 >= self.policy.attempts:
            self.give_up(error)
        wait = self.policy.delay(self.count, retry_after)
        log.info("retrying in %.1fs after: %s", wait, error)
        time.sleep(wait)
        self.count += 1

    def give_up(self, error: BaseException) -> NoReturn:
        """Raise what `failed` raises once the policy is spent, now."""
        if isinstance(error, LMVPError):
            raise error
        raise ServerUnavailable(self.unreachable(error)) from error

    def progressed(self) -> None:
        self.count = 0


def failed_answer(
    error: LMVPError,
    status: int,
    retry_after: str | None,
    *,
    retry_status: frozenset[int] = RETRY_STATUS,
) -> Exception:
    """What a failed answer raises: `TransientAnswer` when its `status` is worth trying again
    (`retry_after` is its `Retry-After` header), else its mapped `error`."""
    if status in retry_status:
        return TransientAnswer(error, parse_retry_after(retry_after))
    return error


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
        """Run `attempt`, retrying connection failures (all, if `safe`) and the answers of
        `RETRY_STATUS` (raised as `TransientAnswer`)."""
        tries = Attempts(self.retry, self._unreachable)
        while True:
            try:
                return attempt()
            except TransientAnswer as exc:
                tries.failed(exc.error, exc.retry_after)
            except httpx.TransportError as exc:
                if not (safe or isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout)):
                    tries.give_up(exc)  # it may have arrived: only the caller knows
                tries.failed(exc)

    def _unreachable(self, error: BaseException) -> str:
        return (
            f"cannot reach the LMVP server at {self.server} ({error}): check that it is running "
            "and the address is right (LMVP_SERVER or `lmvp login SERVER`)"
        )

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
        raise failed_answer(error, response.status_code, response.headers.get("retry-after"))
