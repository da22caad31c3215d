"""The local content-addressed cache: verified, resumable blob downloads and version folders.

Laid out like huggingface_hub's cache, one tree per server:

    <root>/<server-slug>/blobs/<sha256>                 the bytes, named by their hash
    <root>/<server-slug>/blobs/<sha256>.incomplete      a download under way (resumed with Range)
    <root>/<server-slug>/blobs/<sha256>.chunks-incomplete   a chunked download under way
    <root>/<server-slug>/chunk-lists/<sha256>.json      the chunks of a blob fetched by chunks
    <root>/<server-slug>/.locks/<sha256>.lock           one downloader per blob across processes
    <root>/<server-slug>/snapshots/<project>/<model>/<number>/<path>   hard links to blobs

A blob is in the cache only once its bytes hashed to its name: a download goes to the
`.incomplete` name, is hashed as it arrives (a resumed prefix is hashed from disk first),
fsynced and renamed into place. Paths, names and hashes from the server are checked
(`lmvp.validate`) before they touch the disk: a manifest cannot write outside the version's
folder, nor through a symbolic link found in it.

A blob of at least 8 MiB from a server on another machine comes chunk by chunk where the
server stores it so (`lmvp.chunked`): chunks the cache already holds inside other blobs are
copied from there, verified, and only the rest travels; the whole file is hashed all the same.

A server whose blobs live in an object store may answer a download with a redirect to a
short-lived presigned URL of the store: the same GET (and `Range`) goes there, with no
`Authorization` header (the URL carries its own signature; the user's token is for the server
alone), and the bytes are hashed the same way. If the store refuses the URL (expired, say,
when the clocks of server and store disagree), the blob is asked of the server again with
`?redirect=false`, which streams it through the server.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import re
import shutil
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from http.client import HTTPConnection, HTTPResponse, HTTPSConnection
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

import platformdirs

from lmvp import chunked, links, validate
from lmvp._http import HTTP, TransientAnswer
from lmvp.errors import IntegrityError, LMVPError, NotCached
from lmvp.private_files import private_dir
from lmvp.types import FileEntry, Progress, Version
from lmvp.wire import (
    CHUNK,
    SOCKET_TIMEOUT,
    TRANSIENT,
    answer_error,
    api_path,
    base_headers,
    open_connection,
    start_writeback,
    transfer_attempts,
)

__all__ = ["Cache", "default_cache_root", "safe_relative_path", "server_slug"]

log = logging.getLogger(__name__)

_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+)$")
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_BUFFERS = 3


def default_cache_root() -> Path:
    """`<user cache dir>/lmvp`, or `LMVP_CACHE_DIR` when set."""
    return Path(os.environ.get("LMVP_CACHE_DIR") or platformdirs.user_cache_dir("lmvp"))


class Cache:
    """The cache of one server's blobs under `root` (see the module docstring for the layout).

    Safe to share between threads and processes: each blob has a lock file, and everything
    lands in place by rename.
    """

    def __init__(self, root: Path, server: str) -> None:
        self.root = Path(root)
        self.server = server
        self.dir = self.root / server_slug(server)
        self.blobs = self.dir / "blobs"
        self.snapshots = self.dir / "snapshots"
        self._locks = self.dir / ".locks"

    def prepare(self) -> Path:
        """Create this server's cache folder, 0700 (checkpoints of private projects are in it),
        closing it if an older version left it open; returns it."""
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        return private_dir(self.dir)

    def blob_path(self, sha256: str) -> Path:
        """Where the blob with this hash lives (whether or not it is there yet). Raises
        `ProtocolError` for something that is not a sha256 (it would name a path)."""
        return self.blobs / validate.sha256(sha256)

    def has_blob(self, sha256: str, size: int) -> bool:
        """True when the blob is cached with the expected size (its bytes were verified when
        they arrived; `verify_blob` hashes them again)."""
        try:
            return self.blob_path(sha256).stat().st_size == size
        except FileNotFoundError:
            return False

    def download_blob(
        self,
        http: HTTP,
        project: str,
        sha256: str,
        size: int,
        progress: Progress | None = None,
    ) -> Path:
        """Fetch a blob of `project` into the cache unless it is there; returns its path.

        A partial download left by an interrupted call (in this process or an earlier one) is
        resumed with `Range`; a dropped connection is resumed the same way within the retry
        policy of `http`. The bytes are hashed as they arrive; if they do not match, the partial
        file is deleted and the download starts over once. `progress(n)` is called as the
        blob's bytes become present: what was already on disk at once, the rest as it arrives
        (negative after a restart). Another process downloading the same blob is waited for.

        Raises `IntegrityError` when the server's bytes do not hash to `sha256` twice,
        `NotFound` when the project lacks the blob, `ServerUnavailable` when the server cannot
        be reached after retries.
        """
        final = self.blob_path(sha256)
        if self.has_blob(sha256, size):
            if progress:
                progress(size)
            return final
        self.prepare()
        self.blobs.mkdir(parents=True, exist_ok=True, mode=0o700)
        with self._lock(sha256):
            if self.has_blob(sha256, size):  # another process finished it while we waited
                if progress:
                    progress(size)
                return final
            try:
                self._fetch(http, project, sha256, size, progress)
            except IntegrityError as exc:
                log.warning("%s; downloading it again", exc)
                self._fetch(http, project, sha256, size, progress)
        return final

    def _fetch(
        self, http: HTTP, project: str, sha256: str, size: int, progress: Progress | None
    ) -> None:
        """One attempt at the blob: chunk by chunk where chunks pay (`lmvp.chunked`: only the
        chunks the cache lacks travel), else whole."""
        if chunked.chunks_wanted(http, size, "down"):
            lists = self.dir / "chunk-lists"
            try:
                chunked.download_chunked(
                    http, project, sha256, size, blobs=self.blobs, lists=lists, progress=progress
                )
                return
            except chunked.NotChunked:
                pass
        started = time.perf_counter()
        fetched = _BlobDownload(http, project, sha256, size, progress, self.blobs).run()
        links.record(http.server, "down", fetched, time.perf_counter() - started)

    def verify_blob(self, sha256: str) -> bool:
        """Hash the cached blob again. Returns True when it is intact; False when it is absent,
        or was damaged, in which case it is deleted so that the next download fetches it."""
        path = self.blob_path(sha256)
        with self._lock(sha256):
            try:
                digest = _hash_prefix(path, None).hexdigest()
            except FileNotFoundError:
                return False
            if digest == sha256:
                return True
            log.warning("cached blob %s was damaged (it hashes to %s); removed it", path, digest)
            path.unlink(missing_ok=True)
            return False

    def snapshot(self, version: Version, *, verify: bool = False) -> Path:
        """The folder `snapshots/<project>/<model>/<number>/` holding the version's files as
        hard links to the cached blobs (copies where links are impossible); returns it.

        Every blob must be cached already (`download_version` fetches them). With `verify`,
        each blob is hashed again first. Raises `NotCached` for a blob that is not cached,
        `IntegrityError` for a damaged one (which is removed, so downloading again repairs it),
        `ProtocolError` for a manifest that would leave the folder (absolute, `..`, ...).
        """
        folder = self.snapshot_dir(version)
        targets = _Targets(folder)
        for relative, entry in validate.checked_entries(validate.checked_version(version).files):
            self._require_blob(version, entry, verify=verify)
            _place(self.blob_path(entry.sha256), targets.path(relative), link=True)
        return folder

    def snapshot_dir(self, version: Version) -> Path:
        """Where `snapshot` puts the version (checked: the names cannot climb out)."""
        return (
            self.snapshots
            / validate.project_name(version.project)
            / validate.model_name(version.model)
            / str(validate.version_number(version.number))
        )

    def download_version(
        self,
        http: HTTP,
        version: Version,
        *,
        verify: bool = False,
        progress: Progress | None = None,
        parallel: int = 4,
    ) -> Path:
        """Fetch every blob of `version` that is not cached (`parallel` at a time), then make
        its snapshot folder; returns the folder. With `verify`, cached blobs are hashed again
        and damaged ones fetched anew. `progress(n)` counts the bytes of the blobs that were not
        cached, all files together. Raises
        like `download_blob` and `snapshot`."""
        validate.checked_version(version)  # refuse a hostile manifest before any byte moves
        wanted: dict[str, int] = {}
        for entry in version.files:
            wanted.setdefault(entry.sha256, entry.size)
        if verify:
            for sha256 in wanted:
                self.verify_blob(sha256)
        lock = threading.Lock()

        def report(n: int) -> None:
            if progress is not None:
                with lock:
                    progress(n)

        # Only what is not cached counts towards progress (a caller sizes its bar by that).
        fetch = {sha: size for sha, size in wanted.items() if not self.has_blob(sha, size)}
        with ThreadPoolExecutor(max_workers=max(1, parallel), thread_name_prefix="lmvp-dl") as pool:
            futures = [
                pool.submit(self.download_blob, http, version.project, sha256, size, report)
                for sha256, size in fetch.items()
            ]
        for future in futures:
            future.result()
        return self.snapshot(version)

    def materialize(self, version: Version, local_dir: Path) -> Path:
        """Copy the version's files from the cache into `local_dir` (created if needed), at
        their relative paths; returns `local_dir`. Copies, not links: editing the files there
        must not damage the cache. Raises `NotCached`, `IntegrityError` and `ProtocolError` like
        `snapshot`, and `LMVPError` rather than follow a symbolic link inside `local_dir` (it
        could lead out of it)."""
        local_dir = Path(local_dir)
        targets = _Targets(local_dir)
        for relative, entry in validate.checked_entries(validate.checked_version(version).files):
            self._require_blob(version, entry, verify=False)
            _place(self.blob_path(entry.sha256), targets.path(relative), link=False)
        return local_dir

    def _require_blob(self, version: Version, entry: FileEntry, *, verify: bool) -> None:
        if not self.has_blob(entry.sha256, entry.size):
            raise NotCached(
                f"{version.ref}: {entry.path} is not in the cache at {self.dir}; download the "
                "version (without offline mode) to fetch it"
            )
        if verify and not self.verify_blob(entry.sha256):
            raise IntegrityError(
                f"{version.ref}: the cached copy of {entry.path} was damaged and has been "
                "removed; download the version again to fetch it"
            )

    @contextlib.contextmanager
    def _lock(self, sha256: str) -> Iterator[None]:
        self.prepare()
        self._locks.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self._locks / f"{validate.sha256(sha256)}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)


def server_slug(server: str) -> str:
    """A directory name for a server URL.

    `http://10.0.0.5:8000/lmvp` → `http--10.0.0.5-8000--lmvp`."""
    parts = urlsplit(server)
    name = f"{parts.scheme or 'http'}--{parts.hostname or 'local'}"
    if parts.port:
        name += f"-{parts.port}"
    if parts.path.strip("/"):
        name += "--" + parts.path.strip("/")
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name)


def safe_relative_path(path: str) -> PurePosixPath:
    """A manifest path as a relative path that stays inside its folder; raises `ProtocolError`
    for an absolute path, `..`, `.`, empty parts, backslashes or NUL (a hostile server). The
    rules are `lmvp.validate.file_path`'s."""
    return validate.file_path(path)


# --- helpers ------------------------------------------------------------------------------------


class _Targets:
    """Where the files of a manifest go under `root`: `root/<relative path>`, never through a
    symbolic link below `root` (a folder of the manifest that is a link in `root` could lead
    anywhere). Each folder is checked once."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._checked: set[Path] = set()

    def path(self, relative: PurePosixPath) -> Path:
        current = self.root
        for part in relative.parts[:-1]:
            current = current / part
            if current in self._checked:
                continue
            if current.is_symlink():
                raise LMVPError(
                    f"{current} is a symbolic link: refusing to write {relative} through it, "
                    f"which could put it outside {self.root}; remove the link or download into "
                    "another folder"
                )
            self._checked.add(current)
        return current / relative.parts[-1]


def _place(source: Path, target: Path, *, link: bool) -> None:
    """Put `source` at `target` atomically: a hard link (or a copy), renamed over the old one."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        if link and target.samefile(source):
            return
    tmp = target.parent / f".{target.name}.{os.getpid()}.tmp"
    tmp.unlink(missing_ok=True)
    try:
        if not link:
            raise OSError("copy requested")
        os.link(source, tmp)
    except OSError:
        shutil.copyfile(source, tmp)
    os.replace(tmp, target)


def _hash_prefix(path: Path, length: int | None) -> hashlib._Hash:
    """The sha256 state after the first `length` bytes of `path` (None: all of them)."""
    hasher = hashlib.sha256()
    buffer = bytearray(CHUNK)
    view = memoryview(buffer)
    left = length
    with path.open("rb", buffering=0) as f:
        while left is None or left > 0:
            n = f.readinto(view if left is None else view[: min(CHUNK, left)])
            if not n:
                break
            hasher.update(view[:n])
            if left is not None:
                left -= n
    return hasher


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _Restart(Exception):
    """The partial file cannot be continued (the server ignored or refused the range)."""


class _RedirectRefused(Exception):
    """The URL the server redirected to refused the download (expired, denied, gone)."""


class _BlobDownload:
    """One blob into `<sha256>.incomplete`, resumed at its size, hashed, renamed into place."""

    def __init__(
        self,
        http: HTTP,
        project: str,
        sha256: str,
        size: int,
        progress: Progress | None,
        blobs: Path,
    ) -> None:
        self.http = http
        self.project = project
        self.sha256 = sha256
        self.size = size
        self.progress = progress
        self.final = blobs / sha256
        self.partial = blobs / f"{sha256}.incomplete"
        self.reported = 0
        # Set once a presigned URL of the object store was refused: the server streams then.
        self.through_server = False

    def run(self) -> int:
        """Fetch the blob; returns how many of its bytes came over the network (a resumed
        download fetches only the rest)."""
        try:
            return self._run()
        except IntegrityError:
            # Damaged bytes are never resumed: the next attempt starts from nothing.
            self.partial.unlink(missing_ok=True)
            self._report(0)
            raise

    def _run(self) -> int:
        fd = os.open(self.partial, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            have = os.fstat(fd).st_size
            if have > self.size:
                os.ftruncate(fd, 0)
                have = 0
            resumed_at = have
            hasher = _hash_prefix(self.partial, have)
            self._report(have)
            tries = transfer_attempts(self.http)
            while have < self.size:
                try:
                    before = have
                    have = self._receive(fd, have, hasher)
                    if have > before:
                        tries.progressed()
                except _Restart:
                    os.ftruncate(fd, 0)
                    have, hasher = 0, hashlib.sha256()
                    self._report(0)
                except _RedirectRefused as exc:
                    log.warning("%s; asking the server to send blob %s itself", exc, self.sha256)
                    have = os.fstat(fd).st_size
                    self.through_server = True
                except TransientAnswer as exc:
                    have = os.fstat(fd).st_size
                    tries.failed(exc.error, exc.retry_after)
                except TRANSIENT as exc:
                    # What arrived is written and hashed; go on from there.
                    have = os.fstat(fd).st_size
                    tries.failed(exc)
            digest = hasher.hexdigest()
            if have != self.size or digest != self.sha256:
                raise IntegrityError(
                    f"blob {self.sha256} from {self.http.server} arrived damaged ({have} bytes "
                    f"hashing to {digest}); the partial download was deleted"
                )
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(self.partial, self.final)
        _fsync_dir(self.final.parent)
        return self.size - resumed_at

    def _follow(self, location: str, have: int) -> tuple[HTTPConnection, HTTPResponse]:
        """The same GET at the URL a redirect named (a presigned URL of the object store):
        no `Authorization` header, which is the server's alone, and no `If-Range` (the
        store's ETag is its own; the URL names one content-addressed object). Raises
        `_RedirectRefused` when that host refuses."""
        parts = urlsplit(location)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise _RedirectRefused(f"the server redirected blob {self.sha256} to {location!r}")
        kind = HTTPSConnection if parts.scheme == "https" else HTTPConnection
        conn = kind(parts.hostname, parts.port, timeout=SOCKET_TIMEOUT, blocksize=CHUNK)
        headers = {"User-Agent": base_headers(self.http)["User-Agent"]}
        if have:
            headers["Range"] = f"bytes={have}-"
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        try:
            conn.request("GET", target, headers=headers)
            response = conn.getresponse()
        except BaseException:
            conn.close()
            raise
        if 400 <= response.status < 500 and response.status != 416:
            detail = response.read(2048).decode("utf-8", "replace")
            conn.close()
            raise _RedirectRefused(
                f"the object store at {parts.scheme}://{parts.netloc} refused the presigned "
                f"URL for blob {self.sha256} ({response.status}: {_store_message(detail)})"
            )
        return conn, response

    def _report(self, position: int) -> None:
        if self.progress and position != self.reported:
            self.progress(position - self.reported)
        self.reported = position

    def _receive(self, fd: int, have: int, hasher: hashlib._Hash) -> int:
        """One GET from `have` on; returns how many bytes the partial file holds after it.
        The bytes are written from reused buffers while a second thread hashes them."""
        headers = base_headers(self.http)
        if have:
            headers["Range"] = f"bytes={have}-"
            headers["If-Range"] = f'"{self.sha256}"'
        conn = open_connection(self.http)
        hashing = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lmvp-hash")
        pending: list[Future[None]] = []
        target = api_path(self.http, f"/projects/{self.project}/blobs/{self.sha256}")
        try:
            conn.request(
                "GET", target + ("?redirect=false" if self.through_server else ""), headers=headers
            )
            response = conn.getresponse()
            location = response.getheader("Location")
            if response.status in _REDIRECTS and location:
                response.read()
                conn.close()
                conn, response = self._follow(location, have)
            if response.status == 416:
                response.read()
                raise _Restart
            if response.status not in (200, 206):
                raise answer_error(self.http, response)
            if have and response.status == 200:
                raise _Restart  # the server sent the whole blob: start the file over
            if response.status == 206:
                match = _CONTENT_RANGE.match(response.getheader("Content-Range", ""))
                if match is None or int(match[1]) != have:
                    raise _Restart
            buffers = [bytearray(CHUNK) for _ in range(_BUFFERS)]
            i = 0
            while True:
                if len(pending) == _BUFFERS - 1:
                    pending.pop(0).result()  # the buffer about to be filled is hashed
                buffer = buffers[i % _BUFFERS]
                n = response.readinto(buffer)
                if not n:
                    break
                if have + n > self.size:
                    raise IntegrityError(
                        f"blob {self.sha256} from {self.http.server} is longer than the "
                        f"{self.size} bytes its manifest says"
                    )
                view = memoryview(buffer)[:n]
                _write_all(fd, view, have)
                start_writeback(fd, have, n)
                have += n
                pending.append(hashing.submit(hasher.update, view))
                i += 1
                self._report(have)
            return have
        finally:
            for future in pending:
                future.result()
            hashing.shutdown()
            conn.close()


def _store_message(body: str) -> str:
    """The `<Message>` of an S3 error body, or the start of the body."""
    match = re.search(r"<Message>(.*?)</Message>", body, re.S)
    return match[1] if match else body[:200].strip() or "no reason given"


def _write_all(fd: int, view: memoryview, offset: int) -> None:
    written = 0
    while written < len(view):
        written += os.pwrite(fd, view[written:], offset + written)
