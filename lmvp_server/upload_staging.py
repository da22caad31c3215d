"""Where the bytes of an upload in progress wait, and who may write them: the local staging,
a partial file `<upload_dir>/<id>` per upload, shared by every worker process of one host.

Ownership, across processes as within one:

- One writer at a time: a request appending to an upload holds an exclusive `flock` on its
  partial file, and checks the offset under it. The kernel drops the lock when the process
  dies (SIGKILL included), so a dead worker never holds an upload; what it had made durable
  (ftruncate + fsync at the end of each append) is the offset the next request finds.
- A writer whose client stopped sending lets go by itself: a PATCH that has waited
  `upload_stall_seconds` for its next body byte ends, keeping what it received
  (`lmvp_server.routers.uploads`).
- A newer request for the upload (the client resumed: its old connection is dead, even if the
  server has not noticed) asks the writer to let go at once. Within the writer's process it
  stops it directly; across processes it leaves the let-go signal, a file `<id>.let-go` beside
  the partial file, which every writer looks for once a second (a `stat`) and the waiter
  renews while it waits. The writer stops before reading more, keeps what it wrote and answers
  409; the new request takes the lock and removes the signal. A waiter gives up (423) only
  after `upload_stall_seconds` + `LOCK_WAIT_SECONDS`, by when a writer that missed the signal
  has stalled out.
- The running sha256 is kept per process (`ServerContext.hash_cache`); a request that does not
  find it for the offset it starts from (another worker wrote last, or a restart) hashes the
  partial file's prefix again from disk: a worker never trusts a hash it did not compute.

When blobs live in an S3-compatible store, uploads in progress wait there instead, so that
workers on several hosts continue each other's uploads, and ownership is a lease in the
database: `lmvp_server.upload_staging_s3`.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import time
from pathlib import Path

from lmvp_server.settings import Settings

# How long a request waits for another one to let go of an upload's partial file, beyond the
# stall time (a writer that misses the let-go signal stops by then).
LOCK_WAIT_SECONDS = 5.0
# How often a writer looks for the let-go signal, and a waiter renews it.
LET_GO_CHECK_SECONDS = 1.0
_RETOUCH_SECONDS = 0.5
_POLL_SECONDS = 0.02
_LET_GO_SUFFIX = ".let-go"


def partial_path(settings: Settings, upload_id: str) -> Path:
    """Where the bytes of an upload in progress wait."""
    return settings.upload_dir / upload_id


def let_go_path(partial: Path) -> Path:
    """The let-go signal of the upload whose partial file is `partial`."""
    return partial.with_name(partial.name + _LET_GO_SUFFIX)


def ask_to_let_go(partial: Path) -> None:
    """Ask whichever process writes to the upload to stop (create or renew the signal)."""
    signal = let_go_path(partial)
    with contextlib.suppress(FileNotFoundError):  # the upload folder itself is gone
        try:
            os.utime(signal)
        except FileNotFoundError:
            with contextlib.suppress(FileExistsError):
                os.close(os.open(signal, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))


def let_go_asked(partial: Path) -> bool:
    """Whether a request of some process asked the writer of the upload to let go."""
    return os.path.exists(let_go_path(partial))


def clear_let_go(partial: Path) -> None:
    """Remove the signal: its writer let go (or the upload is over)."""
    let_go_path(partial).unlink(missing_ok=True)


def hold_wait_seconds(settings: Settings) -> float:
    """How long a request waits for the writer of an upload to let go."""
    return settings.upload_stall_seconds + LOCK_WAIT_SECONDS


def _try_flock(fd: int, operation: int) -> bool:
    try:
        fcntl.flock(fd, operation | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


class _Waiter:
    """The wait for a partial file's lock, asking its holder to let go the while."""

    def __init__(self, partial: Path, fd: int, operation: int, seconds: float) -> None:
        self.partial = partial
        self.fd = fd
        self.operation = operation
        self.deadline = time.monotonic() + seconds
        self.asked_at = -_RETOUCH_SECONDS

    def attempt(self) -> bool | None:
        """True once held, False past the deadline, None to wait a moment more."""
        if _try_flock(self.fd, self.operation):
            if self.operation == fcntl.LOCK_EX:
                clear_let_go(self.partial)
            return True
        now = time.monotonic()
        if now > self.deadline:
            return False
        if now - self.asked_at >= _RETOUCH_SECONDS:
            # Renewed: the holder that let go before may have been replaced by another request
            # that removed the signal when it took the lock.
            ask_to_let_go(self.partial)
            self.asked_at = now
        return None


async def hold(partial: Path, fd: int, operation: int, seconds: float) -> bool:
    """Take `flock(fd, operation)` on the partial file (LOCK_EX to write, LOCK_SH to read its
    size), asking a holder in any process to let go, and waiting up to `seconds` without
    blocking the event loop; False if it is still held then."""
    waiter = _Waiter(partial, fd, operation, seconds)
    while (held := waiter.attempt()) is None:
        await asyncio.sleep(_POLL_SECONDS)
    return held


def hold_blocking(partial: Path, fd: int, operation: int, seconds: float) -> bool:
    """`hold` for worker threads."""
    waiter = _Waiter(partial, fd, operation, seconds)
    while (held := waiter.attempt()) is None:
        time.sleep(_POLL_SECONDS)
    return held


__all__ = [
    "LET_GO_CHECK_SECONDS",
    "LOCK_WAIT_SECONDS",
    "ask_to_let_go",
    "clear_let_go",
    "hold",
    "hold_blocking",
    "hold_wait_seconds",
    "let_go_asked",
    "let_go_path",
    "partial_path",
]
