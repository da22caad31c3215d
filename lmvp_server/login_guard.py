"""Password logins, throttled and bounded: what the API's `/auth/login` and the console's login
form both go through.

A password check costs argon2id's work (64 MiB and about 0.2-0.3 s of a core at the default
cost), and nothing stopped anyone from asking for as many as they liked: 40 wrong passwords
and then the right one logged in, and 80 logins at once took the server to 1.16 GiB. Now:

- Throttling, by account and by address: an account with `login_failure_limit` (10) failed
  logins within `login_failure_window_seconds` (15 min), or an address with
  `login_address_failure_limit` (50), is refused with 429 and `Retry-After` (the seconds until
  enough failures leave the window) without checking the password, the right one included. A
  sliding window, so an attacker gets 10 guesses per account per 15 minutes whatever they do;
  names that are no account are counted alike, so the answer tells nothing of which exist. A
  successful login clears its account's failures. The failures are rows in the database, so
  every worker of a server counts the same ones.
- Bounded hashing: at most `PASSWORD_CHECK_SLOTS` checks run at once in this process; a login
  waits up to `PASSWORD_CHECK_WAIT_SECONDS` for a slot, in the event loop rather than holding
  one of the thread pool's threads, then gets 429 (`login_busy`) with `Retry-After`. The
  throttle is checked again once a slot is held, so a burst sent at once cannot slip past it.
  (Slots are per process: a server of several workers checks that many times more at once.)
"""

from __future__ import annotations

import asyncio
import math
import os
from datetime import timedelta

from fastapi import Request
from fastapi.concurrency import run_in_threadpool
from sqlalchemy import delete, or_, select
from sqlalchemy.orm import Session, sessionmaker

from lmvp_server.context import get_context
from lmvp_server.db import session_scope, utcnow
from lmvp_server.errors import APIError
from lmvp_server.models import LoginFailure, User
from lmvp_server.security import verify_password
from lmvp_server.settings import Settings

PASSWORD_CHECK_SLOTS = max(2, min(4, os.cpu_count() or 2))
PASSWORD_CHECK_WAIT_SECONDS = 5.0
_BUSY_RETRY_SECONDS = 2
_NAME_CHARS = 64


class LoginRefused(Exception):
    """The login was not tried: too many failures, or too many checks at once (429 both)."""

    def __init__(self, status: int, code: str, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.retry_after = retry_after

    def api_error(self) -> APIError:
        return APIError(
            self.status, self.code, self.message, headers={"Retry-After": str(self.retry_after)}
        )


async def check_login(request: Request, username: str, password: str) -> int | None:
    """The id of the user whose password this is, or None (a wrong username or password, now
    counted). Raises `LoginRefused` when the account or the address is throttled or no slot
    for the check came free in time."""
    ctx = get_context(request)
    settings, sessions = ctx.settings, ctx.sessions
    name = username[:_NAME_CHARS]
    address = (request.client.host if request.client else "")[:64]
    await run_in_threadpool(_refuse_if_throttled, sessions, settings, name, address)
    slots = ctx.password_check_slots
    try:
        await asyncio.wait_for(slots.acquire(), PASSWORD_CHECK_WAIT_SECONDS)
    except TimeoutError:
        raise LoginRefused(
            429,
            "login_busy",
            "the server is checking too many passwords at once; try again in a moment",
            _BUSY_RETRY_SECONDS,
        ) from None
    try:
        return await run_in_threadpool(
            _check_and_count, sessions, settings, name, password, address
        )
    finally:
        slots.release()


def _check_and_count(
    sessions: sessionmaker[Session], settings: Settings, name: str, password: str, address: str
) -> int | None:
    _refuse_if_throttled(sessions, settings, name, address)
    with session_scope(sessions) as session:
        user = session.scalar(select(User).where(User.username == name)) if name else None
        if verify_password(user, password) and user is not None:
            session.execute(delete(LoginFailure).where(LoginFailure.username == name))
            return user.id
        now = utcnow()
        session.execute(delete(LoginFailure).where(LoginFailure.at < now - _window(settings)))
        session.add(LoginFailure(username=name, address=address, at=now))
        return None


def _refuse_if_throttled(
    sessions: sessionmaker[Session], settings: Settings, name: str, address: str
) -> None:
    now = utcnow()
    window = _window(settings)
    with session_scope(sessions) as session:
        rows = session.execute(
            select(LoginFailure.username, LoginFailure.address, LoginFailure.at)
            .where(
                LoginFailure.at >= now - window,
                or_(LoginFailure.username == name, LoginFailure.address == address),
            )
            .order_by(LoginFailure.at)
        ).all()
    by_account = [at for user, _, at in rows if user == name]
    by_address = [at for _, where, at in rows if where == address]
    for times, limit, whose in (
        (by_account, settings.login_failure_limit, "this account"),
        (by_address, settings.login_address_failure_limit, "your address"),
    ):
        if len(times) >= limit:
            # Allowed again once fewer than `limit` failures remain in the window.
            free_at = times[len(times) - limit] + window
            wait = max(1, math.ceil((free_at - now).total_seconds()))
            raise LoginRefused(
                429,
                "too_many_attempts",
                f"too many failed logins for {whose}: try again in {_duration(wait)}",
                wait,
            )


def _window(settings: Settings) -> timedelta:
    return timedelta(seconds=settings.login_failure_window_seconds)


def _duration(seconds: int) -> str:
    if seconds < 120:
        return f"{seconds} seconds"
    return f"{math.ceil(seconds / 60)} minutes"


__all__ = ["PASSWORD_CHECK_SLOTS", "LoginRefused", "check_login"]
