"""Files only their owner may read, for the client and the daemon.

The client's token file, cache (checkpoints of private projects, the hash memo) and upload
state, and the daemon's state directory (its outbox database, settings, status and log), are
made 0600 in 0700 folders whatever the umask and whatever mode a folder already had: a file is
created with an explicit mode through O_EXCL, a temporary name is never reused (O_CREAT keeps
the mode of a file already there), and a SQLite database is made 0600 before SQLite opens it,
so that its `-wal` and `-shm` files, which SQLite creates with the database's mode, are too.
The server has the same rules for its data directory in `lmvp_server.file_modes`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
import tempfile
from pathlib import Path

__all__ = ["private_dir", "private_file", "private_sqlite", "warn_if_open", "write_private"]

log = logging.getLogger(__name__)

PRIVATE_FILE = 0o600
PRIVATE_DIR = 0o700
_SQLITE_COMPANIONS = ("", "-wal", "-shm", "-journal")
_warned: set[Path] = set()


def private_dir(path: Path) -> Path:
    """Create `path` (and its parents) with the folder itself 0700; a folder of lmvp's that an
    older version left open to others is closed. Returns `path`."""
    path.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIR)
    _close(path, PRIVATE_DIR)
    return path


def warn_if_open(path: Path, what: str) -> bool:
    """Log a warning (once per process) naming `path` and the command that closes it when other
    users may enter or read the folder; True if they may."""
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except OSError:
        return False
    if not mode & 0o077:
        return False
    if path not in _warned:
        _warned.add(path)
        log.warning(
            "%s %s is open to other users (mode %04o): they may read what is in it; "
            "run `chmod 700 %s`",
            what,
            path,
            mode,
            path,
        )
    return True


def private_file(path: Path) -> Path:
    """Make sure the file `path` exists and is 0600 (created so, or closed if it was open)."""
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, PRIVATE_FILE))
    _close(path, PRIVATE_FILE)
    return path


def private_sqlite(path: Path) -> Path:
    """Make the SQLite database `path` 0600 before SQLite opens it, and its `-wal`, `-shm` and
    `-journal` files too if an older version left them readable.

    An existing database is never opened here: closing any descriptor of a file drops every
    POSIX lock this process holds on it, SQLite's included."""
    private_file(path)
    for suffix in _SQLITE_COMPANIONS[1:]:
        _close(path.with_name(path.name + suffix), PRIVATE_FILE)
    return path


def write_private(path: Path, text: str) -> Path:
    """Replace `path` with `text`, mode 0600: written to a fresh temporary name beside it
    (`mkstemp`: O_EXCL, 0600), flushed to disk and renamed over it."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, PRIVATE_FILE)
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


def _close(path: Path, mode: int) -> None:
    try:
        current = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        return
    if current & 0o077:
        try:
            os.chmod(path, mode)
        except PermissionError:
            log.warning(
                "%s is open to other users (mode %04o) and not this user's to change: "
                "run `chmod %o %s` as its owner",
                path,
                current,
                mode,
                path,
            )
