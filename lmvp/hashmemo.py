"""Remembered sha256s of local files, so that publishing an unchanged file again costs no hashing.

An entry is keyed by the file's path and identified by what `stat` says about it: device, inode,
size, mtime and ctime (nanoseconds). ctime cannot be set by a program, so a file whose bytes
changed has a different ctime, as git's index relies on. A timestamp only advances in ticks, so
a file written in the same tick as it was looked at could change without its times moving;
like git's "racily clean" rule, an entry only counts when the file's times are older than the
moment it was looked at by more than `_RACY_NS`.

The memo is a small SQLite database in the client's cache dir. It is an optimisation and never
a source of truth: if it cannot be opened or written, files are simply hashed.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from pathlib import Path

from lmvp.private_files import private_sqlite

log = logging.getLogger(__name__)

# How much older than the moment of hashing a file's mtime and ctime must be for its hash to be
# remembered: well over any filesystem's timestamp tick.
_RACY_NS = 2_000_000_000


class HashMemo:
    """sha256 by (path, device, inode, size, mtime, ctime), in a SQLite file at `path`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        self._broken = False

    def lookup(self, file: Path, st: os.stat_result) -> str | None:
        """The remembered sha256 of `file` if its stat `st` is the one it was hashed with."""
        db = self._connect()
        if db is None:
            return None
        try:
            with self._lock:
                row = db.execute(
                    "SELECT sha256 FROM hashes WHERE path = ? AND dev = ? AND ino = ? AND size = ?"
                    " AND mtime_ns = ? AND ctime_ns = ?",
                    (str(file), *_identity(st)),
                ).fetchone()
        except sqlite3.Error as exc:
            self._give_up(exc)
            return None
        return str(row[0]) if row else None

    def remember(self, file: Path, st: os.stat_result, sha256: str, hashed_at_ns: int) -> None:
        """Remember that `file`, as `st` describes it, hashed to `sha256` when it was read from
        `hashed_at_ns` (a `time.time_ns()` taken before reading). Files touched too shortly
        before that moment are not remembered (see the module's docstring)."""
        if max(st.st_mtime_ns, st.st_ctime_ns) > hashed_at_ns - _RACY_NS:
            return
        db = self._connect()
        if db is None:
            return
        try:
            with self._lock, db:
                db.execute(
                    "INSERT OR REPLACE INTO hashes (path, dev, ino, size, mtime_ns, ctime_ns,"
                    " sha256, used) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (str(file), *_identity(st), sha256, int(time.time())),
                )
        except sqlite3.Error as exc:
            self._give_up(exc)

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    def _connect(self) -> sqlite3.Connection | None:
        if self._db is not None or self._broken:
            return self._db
        with self._lock:
            if self._db is not None:
                return self._db
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                private_sqlite(self.path)  # it lists the user's files
                db = sqlite3.connect(self.path, timeout=5, check_same_thread=False)
                db.execute("PRAGMA journal_mode=WAL")
                db.execute(
                    "CREATE TABLE IF NOT EXISTS hashes (path TEXT PRIMARY KEY, dev INTEGER,"
                    " ino INTEGER, size INTEGER, mtime_ns INTEGER, ctime_ns INTEGER,"
                    " sha256 TEXT NOT NULL, used INTEGER)"
                )
            except (OSError, sqlite3.Error) as exc:
                self._broken = True
                log.debug("hash memo %s unavailable, hashing every file: %s", self.path, exc)
                return None
            self._db = db
            return db

    def _give_up(self, exc: Exception) -> None:
        log.debug("hash memo %s failed, hashing every file: %s", self.path, exc)
        self._broken = True
        self.close()


def _identity(st: os.stat_result) -> tuple[int, int, int, int, int]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


__all__ = ["HashMemo"]
