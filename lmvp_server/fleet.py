"""Background work that runs once across the fleet: every worker and every host sharing one
database registers the same periodic jobs, and exactly one process at a time runs them.

The one that runs them holds the fleet's leader lock:

- PostgreSQL: a session-level advisory lock (`pg_try_advisory_lock` on `LEADER_LOCK_KEY`, the
  bytes of "LMVPflet", distinct from the start-up and event-order keys)
  on a connection of its own (application_name `lmvp-fleet-leader`), held for as long as the
  process lives. When the process dies, even by SIGKILL or with its host, PostgreSQL ends its
  session and the lock with it; another process, which tries again every `retry_seconds`,
  takes over. The holder checks its connection at the same pace and, if it was lost (so the
  lock may already be another's), stops running jobs until it holds the lock again.
- SQLite (one host): an exclusive `flock` on a file beside the database (`lmvp.db.fleet-lock`),
  which the kernel releases when the process dies.
- An in-memory SQLite database belongs to one process, which runs the jobs.

Jobs are registered with `Fleet.every(name, seconds, run)` before `start`; the leader runs each
once as soon as it becomes leader and then every `seconds`, one after another on the fleet's
own thread (`run` blocks and must not assume the event loop). A job's failure is logged and
the job runs again at its next turn. Work that concerns only this host's own disk (files of
its own upload folder) is not fleet work: every process does that itself.

A job must decide from the database what it may touch, never from what this process happens
to know: the leader is any one of the processes, and the others' work is in flight.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Connection, Engine, create_engine, text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.pool import NullPool

log = logging.getLogger(__name__)

# The leader lock's key: any fixed 64-bit number; this one is the bytes of "LMVPflet".
LEADER_LOCK_KEY = 0x4C4D5650_666C6574
# The leader connection's application_name, as pg_stat_activity shows it.
LEADER_NAME = "lmvp-fleet-leader"
DEFAULT_RETRY_SECONDS = 5.0


@dataclass
class Job:
    """A periodic job: `run()` every `seconds` on the leader."""

    name: str
    seconds: float
    run: Callable[[], object]
    next_at: float = 0.0


class _Lease:
    """The leader lock of one kind of database; `acquire` never waits."""

    def acquire(self) -> bool:
        raise NotImplementedError

    def still_held(self) -> bool:
        return True

    def release(self) -> None:
        pass


class _AdvisoryLease(_Lease):
    """A PostgreSQL session-level advisory lock on a connection outside the pool."""

    def __init__(self, engine: Engine) -> None:
        self._engine = create_engine(
            engine.url,
            poolclass=NullPool,
            isolation_level="AUTOCOMMIT",
            connect_args={"application_name": LEADER_NAME},
        )
        self._conn: Connection | None = None

    def acquire(self) -> bool:
        try:
            conn = self._engine.connect()
        except SQLAlchemyError as exc:
            log.warning("fleet: cannot reach the database to take the leader lock (%s)", exc)
            return False
        try:
            held = bool(
                conn.scalar(text("SELECT pg_try_advisory_lock(:key)"), {"key": LEADER_LOCK_KEY})
            )
        except SQLAlchemyError as exc:
            log.warning("fleet: taking the leader lock failed (%s)", exc)
            held = False
        if held:
            self._conn = conn
        else:
            # A follower keeps no connection open between tries.
            conn.close()
        return held

    def still_held(self) -> bool:
        if self._conn is None:
            return False
        try:
            self._conn.execute(text("SELECT 1"))
            return True
        except SQLAlchemyError as exc:
            log.warning("fleet: lost the leader lock's connection (%s)", exc)
            self.release()
            return False

    def release(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(SQLAlchemyError):
                conn.close()  # ends the session, and the lock with it

    def dispose(self) -> None:
        self.release()
        self._engine.dispose()


class _FileLease(_Lease):
    """An exclusive flock on a file; the kernel drops it with the process."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._fd = -1

    def acquire(self) -> bool:
        fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._fd = fd
        return True

    def still_held(self) -> bool:
        return self._fd >= 0

    def release(self) -> None:
        fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)


class _SoleLease(_Lease):
    def acquire(self) -> bool:
        return True


def _lease_for(engine: Engine) -> _Lease:
    if engine.dialect.name == "postgresql":
        return _AdvisoryLease(engine)
    database = engine.url.database or ""
    # An in-memory database (or URI) belongs to one process.
    on_disk = database not in ("", ":memory:") and not database.startswith("file:")
    if engine.dialect.name == "sqlite" and on_disk:
        return _FileLease(Path(f"{database}.fleet-lock"))
    return _SoleLease()


class Fleet:
    """This process's part in running the fleet's background jobs: it runs them while it holds
    the leader lock, and otherwise tries to take the lock every `retry_seconds`."""

    def __init__(self, engine: Engine, *, retry_seconds: float = DEFAULT_RETRY_SECONDS) -> None:
        self._engine = engine
        self._retry = retry_seconds
        self._jobs: list[Job] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._leading = False

    @property
    def is_leader(self) -> bool:
        """Whether this process runs the fleet's jobs right now."""
        return self._leading

    def every(self, name: str, seconds: float, run: Callable[[], object]) -> None:
        """Run `run()` every `seconds` on whichever process leads (register before `start`)."""
        if self._thread is not None:
            raise RuntimeError("register background jobs before the fleet starts")
        self._jobs.append(Job(name, max(0.01, seconds), run))

    def start(self) -> None:
        """Start the fleet's thread (a daemon: it never keeps the process alive)."""
        self._thread = threading.Thread(target=self._loop, name="fleet", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop after the job running now, if any, and let go of the lock."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _loop(self) -> None:
        lease = _lease_for(self._engine)
        try:
            while not self._stop.is_set():
                if lease.acquire():
                    self._lead(lease)
                self._stop.wait(self._retry)
        finally:
            self._leading = False
            if isinstance(lease, _AdvisoryLease):
                lease.dispose()
            else:
                lease.release()

    def _lead(self, lease: _Lease) -> None:
        self._leading = True
        log.info("fleet: this process (pid %d) now runs the background jobs", os.getpid())
        now = time.monotonic()
        for job in self._jobs:
            job.next_at = now
        checked = now
        while not self._stop.is_set():
            now = time.monotonic()
            if now - checked >= self._retry:
                checked = now
                if not lease.still_held():
                    break
            for job in self._jobs:
                if job.next_at <= now and not self._stop.is_set():
                    self._run(job)
                    job.next_at = time.monotonic() + job.seconds
            due = min((job.next_at for job in self._jobs), default=now + self._retry)
            wait = min(due, checked + self._retry) - time.monotonic()
            self._stop.wait(max(0.0, wait))
        self._leading = False
        if not self._stop.is_set():
            log.warning("fleet: this process no longer runs the background jobs")

    @staticmethod
    def _run(job: Job) -> None:
        started = time.monotonic()
        try:
            job.run()
        except Exception:
            log.exception("fleet: background job %r failed; it runs again later", job.name)
            return
        log.info(
            "fleet: background job %r ran (pid %d, %.3f s)",
            job.name,
            os.getpid(),
            time.monotonic() - started,
        )


__all__ = ["DEFAULT_RETRY_SECONDS", "LEADER_LOCK_KEY", "LEADER_NAME", "Fleet", "Job"]
