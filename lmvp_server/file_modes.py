"""Who may read the server's files: its owner alone.

The data directory holds the database (password and token hashes), the initial admin password,
and everyone's checkpoints. An admin may point the server at a directory that already exists
with the usual 0755, under the usual umask 022, where every file the server makes would be
readable by every local user. So the server's process creates files with umask 077, the SQLite
database is made 0600 before SQLite opens it (SQLite gives its `-wal` and `-shm` files the
database's mode), folders the server owns are 0700, files an older server left open are closed
at start, and a data directory others may enter is named in a warning with the command that
closes it (the server does not change the mode of a directory it was given).
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
from pathlib import Path

log = logging.getLogger(__name__)
_warned: set[Path] = set()

PRIVATE_FILE = 0o600
PRIVATE_DIR = 0o700
_SQLITE_COMPANIONS = ("", "-wal", "-shm", "-journal")


def restrict_umask() -> None:
    """Make every file and folder this process creates its owner's alone (umask 077)."""
    os.umask(os.umask(0o077) | 0o077)


def private_dir(path: Path) -> None:
    """Create `path` (and its parents) as 0700; a folder of the server's that an older version
    left open to others is closed (0700)."""
    path.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIR)
    _close(path, PRIVATE_DIR)


def warn_if_open(path: Path, what: str) -> bool:
    """Log a warning (once per process) when other users may enter or read the folder `path`;
    True if they may."""
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except OSError:
        return False
    if not mode & 0o077:
        return False
    if path in _warned:
        return True
    _warned.add(path)
    log.warning(
        "%s %s is open to other users (mode %04o): they may read what is in it; run `chmod 700 %s`",
        what,
        path,
        mode,
        path,
    )
    return True


def private_sqlite(path: Path) -> None:
    """Make the SQLite database at `path` its owner's alone before SQLite opens it: created
    0600 if missing, and it and its `-wal`, `-shm` and `-journal` files set to 0600 if an
    older server left them readable."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIR)
    # Never open a database that exists: closing any descriptor of a file drops every POSIX
    # lock this process holds on it, SQLite's included (a connection of this process may have
    # it open). A new file is made with O_EXCL; an existing one only has its mode checked.
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, PRIVATE_FILE))
    for suffix in _SQLITE_COMPANIONS:
        _close(path.with_name(path.name + suffix), PRIVATE_FILE)


def private_file(path: Path) -> None:
    """Set the file `path` to 0600 if it exists and others may read it."""
    _close(path, PRIVATE_FILE)


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
