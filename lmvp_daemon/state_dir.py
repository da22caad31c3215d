"""The daemon's state directory: where it is, and the lock that lets one daemon use it.

The state directory holds the outbox (`lmvp_daemon.outbox_db`), the upload state and the
daemon's settings and status. This module owns finding it (the argument, else
``$LMVP_DAEMON_STATE_DIR``, else the platform's user state dir) and ``daemon.lock``, the
advisory lock that keeps a second daemon off a directory another one is using. It knows
nothing of SQLite, watchdog, HTTP or Qt.
"""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path
from types import TracebackType

import platformdirs

from lmvp_daemon.errors import OutboxError

STATE_DIR_ENV = "LMVP_DAEMON_STATE_DIR"
LOCK_NAME = "daemon.lock"
# Who holds the lock, written next to its pid: what the user must stop to free it.
DAEMON = "lmvp-daemon"
DESKTOP = "lmvp-desktop"


def resolve_state_dir(state_dir: Path | None = None) -> Path:
    """The daemon's state directory: the argument, else $LMVP_DAEMON_STATE_DIR, else the
    platform's user state dir. Created (private to the user) if missing."""
    if state_dir is None:
        env = os.environ.get(STATE_DIR_ENV)
        state_dir = Path(env) if env else Path(platformdirs.user_state_dir("lmvp-daemon"))
    state_dir = state_dir.expanduser().absolute()
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    return state_dir


# --- the lock ------------------------------------------------------------------------------


class StateDirInUse(OutboxError):
    """Another daemon (`lmvp-daemon run`, or the one the desktop app embeds) syncs from this
    state directory: two would send the same checkpoints. Names it, its pid, and what to do."""

    title = "Already syncing"

    def __init__(self, directory: Path, pid: str, holder: str) -> None:
        self.directory = directory
        self.pid = pid
        self.holder = holder
        if holder == DESKTOP:
            who = f"the LMVP desktop app (pid {pid})"
            fix = "quit it first (Quit in its tray or File menu)"
        else:
            who = f"another lmvp-daemon (pid {pid})"
            fix = f"stop it first (Ctrl-C where it runs, or `kill {pid}`)"
        super().__init__(
            f"{who} is already syncing the folders of {directory}: {fix}, or give this one "
            f"its own state directory with ${STATE_DIR_ENV}"
        )


class LockHandle:
    """Holds `daemon.lock` in a state directory until released (or the process dies)."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd

    def release(self) -> None:
        """Let another daemon use the state directory. Safe to call twice."""
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> LockHandle:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


def acquire_lock(state_dir: Path | None = None, *, holder: str = DAEMON) -> LockHandle:
    """Make this process the only daemon using the state directory, and write its pid and
    `holder` (`DAEMON` or `DESKTOP`: what the user must stop to free it) there.

    The kernel drops the lock when the process exits, however it dies. Raises
    `StateDirInUse` naming the holder and its pid if another daemon holds it.
    """
    directory = resolve_state_dir(state_dir)
    path = directory / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        text = os.pread(fd, 256, 0).decode(errors="replace")
        os.close(fd)
        if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise OutboxError(f"cannot lock {path}: {exc.strerror}") from exc
        pid, other = _parse_holder(text)
        raise StateDirInUse(directory, pid, other) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n{holder}\n".encode(), 0)
    os.fsync(fd)
    return LockHandle(path, fd)


def lock_holder(state_dir: Path) -> tuple[str, str] | None:
    """(pid, holder) of the daemon holding the state directory's lock, or None if none does."""
    path = state_dir / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _parse_holder(os.pread(fd, 256, 0).decode(errors="replace"))
        return None
    finally:
        os.close(fd)


def _parse_holder(text: str) -> tuple[str, str]:
    """(pid, holder) from the lock file's text; older daemons wrote the pid alone."""
    lines = text.split()
    pid = lines[0] if lines else "unknown"
    holder = lines[1] if len(lines) > 1 and lines[1] in (DAEMON, DESKTOP) else DAEMON
    return pid, holder
