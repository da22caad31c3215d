"""Content-addressed blob storage: bytes addressed by their sha256, written atomically.

`BlobStore` is the interface the API uses; `LocalBlobStore` keeps blobs in a folder (the embedded
default). An S3-compatible backend will implement the same interface.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
import threading
import uuid
from abc import ABC, abstractmethod
from pathlib import Path
from typing import BinaryIO

_DISCARD_PREFIX = "discard-"


class BlobStore(ABC):
    """Where verified blob bytes live. Callers check hashes before handing bytes over."""

    @abstractmethod
    def exists(self, sha256: str) -> bool: ...

    @abstractmethod
    def adopt(self, src: Path, sha256: str) -> None:
        """Take a complete, verified, fsynced local file as the blob `sha256`.

        The file is moved (or copied) into the store atomically; `src` no longer exists after.
        If the store already holds the blob, `src` is simply removed.
        """

    @abstractmethod
    def open(self, sha256: str) -> BinaryIO: ...

    @abstractmethod
    def local_path(self, sha256: str) -> Path | None:
        """A path the server can stream from directly, or None for remote stores."""


def fsync_dir(path: Path) -> None:
    """Make a rename or a new file in `path` durable (POSIX needs the directory fsynced too)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class LocalBlobStore(BlobStore):
    """Blobs as files `<root>/ab/cd/<sha256>`, made by temp file + fsync + rename."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._tmp = root / "tmp"
        self._tmp.mkdir(parents=True, exist_ok=True, mode=0o700)
        for left in self._tmp.glob(f"{_DISCARD_PREFIX}*"):
            left.unlink(missing_ok=True)

    def _discard(self, path: Path) -> None:
        """Delete a file the store does not need (bytes it already holds), without waiting:
        removing a large file just written means dropping its pages from the cache, a quarter
        of a second for 1 GiB. It is renamed out of the way at once and unlinked by a thread;
        names left by a server that stopped first are removed at the next start."""
        trash = self._tmp / f"{_DISCARD_PREFIX}{uuid.uuid4().hex}"
        try:
            os.rename(path, trash)
        except OSError:  # another file system: remove it here
            path.unlink(missing_ok=True)
            return
        threading.Thread(target=trash.unlink, kwargs={"missing_ok": True}, daemon=True).start()

    def _path(self, sha256: str) -> Path:
        return self.root / sha256[:2] / sha256[2:4] / sha256

    def exists(self, sha256: str) -> bool:
        return self._path(sha256).is_file()

    def local_path(self, sha256: str) -> Path | None:
        return self._path(sha256)

    def open(self, sha256: str) -> BinaryIO:
        return self._path(sha256).open("rb")

    def adopt(self, src: Path, sha256: str) -> None:
        dst = self._path(sha256)
        if dst.is_file():
            self._discard(src)
            return
        dst.parent.parent.mkdir(exist_ok=True, mode=0o700)
        dst.parent.mkdir(exist_ok=True, mode=0o700)
        try:
            os.replace(src, dst)
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
            self._copy_in(src, dst)
            src.unlink()
        fsync_dir(dst.parent)

    def _copy_in(self, src: Path, dst: Path) -> None:
        # The upload folder is on another file system: copy to a temp name beside the
        # destination, fsync, then rename, so a reader never sees a partial blob.
        fd, tmp_name = tempfile.mkstemp(dir=self._tmp)
        try:
            with os.fdopen(fd, "wb") as out, src.open("rb") as inp:
                shutil.copyfileobj(inp, out, 1024 * 1024)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp_name, dst)
        except BaseException:
            Path(tmp_name).unlink(missing_ok=True)
            raise
