"""Bulk bytes to the server: resumable tus uploads, which blobs a project lacks, and fast sha256.

File bytes never go through httpx: h11 parses and copies every chunk, which halves throughput.
Uploads speak tus over `http.client` and send the body with `sendfile(2)` (page cache straight
to the socket); JSON calls go through `lmvp._http.HTTP`. An upload remembers its tus URL in a
small state file, so a dropped connection, a crash or a later process resumes at the offset the
server reports instead of sending the file again. The download side lives in `lmvp.cache`.
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import fcntl
import hashlib
import ipaddress
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from http.client import HTTPConnection, HTTPException, HTTPResponse, HTTPSConnection
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

import httpx
import platformdirs

from lmvp import __version__, local_upload
from lmvp._http import API_PREFIX, HTTP, error_from_response, parse_retry_after
from lmvp.errors import IntegrityError, LMVPError, ServerUnavailable

__all__ = ["hash_file", "missing_blobs", "upload_file", "upload_files", "upload_unhashed"]

log = logging.getLogger(__name__)

CHUNK = 4 * 1024 * 1024
# sendfile is called in slices this big so that progress is reported while a large body goes out.
_SENDFILE_SLICE = 16 * 1024 * 1024
# How long a socket may stay silent. The server answers a finished PATCH only after storing the
# blob, so the wait for that answer gets more room.
SOCKET_TIMEOUT = 60.0
_FINISH_TIMEOUT = 600.0
_MISSING_BATCH = 10_000
# Answers after which the same upload is tried again (after HEAD tells the offset): the server
# is busy or failing (429, 5xx), another request still holds the upload (423), or the offset
# moved under us (409).
_RETRY_STATUS = frozenset({409, 423, 429, 500, 502, 503, 504})
_TRANSIENT = (OSError, HTTPException)

Progress = Callable[[int], None]


def upload_file(
    http: HTTP,
    project: str,
    path: Path,
    *,
    sha256: str,
    size: int,
    progress: Progress | None = None,
    state_dir: Path | None = None,
) -> None:
    """Upload `path` (whose bytes hash to `sha256` and number `size`) into `project` with tus.

    Resumable: the upload's URL is kept in a state file under `state_dir` (default: the user
    state dir, `uploads/`), so a later call, also in another process, asks the server how much
    it holds (HEAD) and sends only the rest. A dropped connection is resumed the same way, with
    backoff, within the retry policy of `http`. `progress(n)` is called as the file's position
    on the server advances: bytes the server already held are reported at once, and `n` is
    negative when a dropped connection lost bytes that must be sent again; the sum ends at
    `size`.

    Returns None once the server has stored the blob. Raises `IntegrityError` when the bytes the
    server received do not hash to `sha256` (the file changed while it was sent),
    `ServerUnavailable` when the server cannot be reached after retries, and the mapped
    `LMVPError` for refusals (`PermissionDenied`, `NotFound`, ...).
    """
    state = _UploadState(state_dir or default_state_dir(), http.server, project, sha256)
    with state.locked() as waited:
        if waited and sha256 not in missing_blobs(http, project, [sha256]):
            # Another process uploaded the same bytes while this one waited for the lock.
            if progress:
                progress(size)
            return
        _TusUpload(http, project, path, sha256, size, progress, state).run()


def upload_files(
    http: HTTP,
    project: str,
    files: list[tuple[Path, str, int]],
    *,
    parallel: int = 4,
    progress: Progress | None = None,
    state_dir: Path | None = None,
) -> None:
    """Upload several `(path, sha256, size)` files into `project`, `parallel` at a time.

    `progress(n)` receives the bytes of all files together (calls are serialised, so a plain
    counter or a tqdm bar works). Files with the same sha256 are sent once. Returns None when
    all are stored; raises the first error of any file (the others are still let finish, so
    their state files stay consistent).
    """
    unique: dict[str, tuple[Path, str, int]] = {}
    for entry in files:
        unique.setdefault(entry[1], entry)
    report = serialised(progress)

    def one(entry: tuple[Path, str, int]) -> None:
        path, sha256, size = entry
        upload_file(
            http, project, path, sha256=sha256, size=size, progress=report, state_dir=state_dir
        )

    with ThreadPoolExecutor(max_workers=max(1, parallel), thread_name_prefix="lmvp-up") as pool:
        futures = [pool.submit(one, entry) for entry in unique.values()]
    for future in futures:
        future.result()


def upload_unhashed(
    http: HTTP,
    project: str,
    path: Path,
    *,
    size: int,
    progress: Progress | None = None,
    state_dir: Path | None = None,
    hash_here: bool | None = None,
) -> str:
    """Upload `path` into `project` without hashing it first; returns its sha256.

    Hashing a large file before sending it costs as long again as sending it. Here the upload
    declares no hash: the server stores the bytes under the hash of what it received and names
    it in its last answer. The size, mtime, ctime and inode of the file must be the same after
    the upload as before it, or `IntegrityError` is raised and nothing refers to the bytes.

    With `hash_here`, the file is also hashed here while it is sent: the server's hash must then
    equal this one (or `IntegrityError`: bytes were damaged on the way), and as soon as it is
    known the project is asked whether it already holds those bytes; if it does, the upload
    stops at once and is aborted. By default it is on unless the server is on this machine
    (loopback): there no bytes cross a wire that could damage them, and the two hashes would
    compete for the same CPU.

    Resumable like `upload_file`: a later call for the same unchanged file (same device, inode,
    size and mtime), also in another process, goes on from the server's offset. Raises
    `ServerUnavailable`, `IntegrityError`, `OSError` for a file that cannot be read, and the
    mapped `LMVPError` for refusals.
    """
    if hash_here is None:
        hash_here = not server_is_local(http)
    before = path.stat()
    identity = f"unhashed:{before.st_dev}:{before.st_ino}:{size}:{before.st_mtime_ns}"
    state = _UploadState(state_dir or default_state_dir(), http.server, project, identity)
    stop = threading.Event()

    def ask_if_held(hashing: Future[str]) -> None:
        try:
            digest = hashing.result()
            if digest not in missing_blobs(http, project, [digest]):
                stop.set()
        except Exception:  # the upload goes on; a failed hash is raised below
            if hashing.exception() is not None:
                stop.set()

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="lmvp-hash") as pool:
        hashing: Future[str] | None = None
        if hash_here:
            hashing = pool.submit(hash_file, path)
            hashing.add_done_callback(ask_if_held)
        with state.locked():
            upload = _TusUpload(
                http,
                project,
                path,
                "",
                size,
                progress,
                state,
                digest=hashing.result if hashing else None,
                stop=stop,
            )
            upload.run()
        digest = hashing.result() if hashing else upload.stored_as
    check_unchanged(path, before)
    if upload.stopped:  # the hash showed the project holds the bytes
        upload.report_position(size)
        assert digest is not None
        return digest
    if digest is None:
        # Stored, but the answer naming its hash was lost (another request finished it).
        digest = hash_file(path)
        check_unchanged(path, before)
        if digest in missing_blobs(http, project, [digest]):
            raise IntegrityError(
                f"{path} changed while it was uploaded; nothing was published. Upload it again "
                "once it is no longer being written."
            )
        return digest
    if upload.stored_as != digest:
        raise IntegrityError(
            f"{path} changed while it was uploaded, or its bytes were damaged on the way: they "
            f"hash to {digest} here but to {upload.stored_as} on the server. Upload it again "
            "once it is no longer being written."
        )
    return digest


def server_is_local(http: HTTP) -> bool:
    """Whether the server's URL names this machine (localhost or a loopback address)."""
    host = urlsplit(http.server).hostname or ""
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_unchanged(path: Path, before: os.stat_result, *, while_: str = "uploaded") -> None:
    """Raise `IntegrityError` if `path` is no longer the file `before` describes (size, mtime,
    ctime or inode moved): it changed while it was read."""
    after = path.stat()
    fields = ("st_size", "st_mtime_ns", "st_ctime_ns", "st_ino")
    if any(getattr(after, f) != getattr(before, f) for f in fields):
        raise IntegrityError(
            f"{path} changed while it was {while_}; nothing was published. Publish it again "
            "once it is no longer being written."
        )


def serialised(progress: Progress | None) -> Progress | None:
    """`progress`, callable from several threads at once (None stays None)."""
    if progress is None:
        return None
    lock = threading.Lock()

    def report(n: int) -> None:
        with lock:
            progress(n)

    return report


def missing_blobs(http: HTTP, project: str, hashes: Iterable[str]) -> set[str]:
    """The hashes among `hashes` whose bytes `project` does not hold (asked in batches of
    10,000). Raises the mapped `LMVPError` (e.g. `PermissionDenied` for a viewer)."""
    wanted = list(dict.fromkeys(h.lower() for h in hashes))
    missing: set[str] = set()
    for start in range(0, len(wanted), _MISSING_BATCH):
        batch = wanted[start : start + _MISSING_BATCH]
        # Asking is idempotent: retry it like a GET.
        body = http.json(
            "POST", f"/projects/{project}/blobs/missing", json={"sha256": batch}, idempotent=True
        )
        missing.update(body["missing"])
    return missing


def hash_file(path: Path, progress: Progress | None = None) -> str:
    """The sha256 of the file at `path`, hex. Reads 4 MiB at a time into one reused buffer
    (hashlib releases the GIL, so several files hash in parallel threads). Raises `OSError`."""
    hasher = hashlib.sha256()
    buffer = bytearray(CHUNK)
    view = memoryview(buffer)
    with path.open("rb", buffering=0) as f:
        while n := f.readinto(buffer):
            hasher.update(view[:n])
            if progress:
                progress(n)
    return hasher.hexdigest()


def default_state_dir() -> Path:
    """Where upload state files live: `<user state dir>/lmvp/uploads`."""
    return Path(platformdirs.user_state_dir("lmvp")) / "uploads"


# --- the wire, shared with lmvp.cache -----------------------------------------------------------


def open_connection(http: HTTP, timeout: float = SOCKET_TIMEOUT) -> HTTPConnection:
    """A raw `http.client` connection to the server of `http` (HTTPS when its URL says so)."""
    parts = urlsplit(http.server)
    if parts.scheme == "https":
        return HTTPSConnection(parts.hostname or "", parts.port, timeout=timeout, blocksize=CHUNK)
    return HTTPConnection(parts.hostname or "", parts.port, timeout=timeout, blocksize=CHUNK)


def api_path(http: HTTP, path: str) -> str:
    """The request target for an API path (`/projects/...`), under the server's base path."""
    return urlsplit(http.server).path.rstrip("/") + API_PREFIX + path


def base_headers(http: HTTP) -> dict[str, str]:
    headers = {"User-Agent": f"lmvp/{__version__}"}
    if http.token:
        headers["Authorization"] = f"Bearer {http.token}"
    return headers


def error_from_raw(http: HTTP, response: HTTPResponse) -> LMVPError:
    """The mapped `LMVPError` for a failed `http.client` response (its body is read)."""
    body = response.read()
    mirrored = httpx.Response(response.status, headers=response.getheaders(), content=body)
    return error_from_response(mirrored, http.server)


def backoff(http: HTTP, attempt: int, error: BaseException, retry_after: float | None) -> None:
    """Sleep before retry number `attempt` (from 0), or raise once the policy is spent."""
    if attempt + 1 >= http.retry.attempts:
        if isinstance(error, LMVPError):
            raise error
        raise ServerUnavailable(
            f"lost the connection to {http.server} and could not get it back ({error}): check "
            "that the server is running, then try again; finished bytes are kept"
        ) from error
    wait = http.retry.delay(attempt, retry_after)
    log.info("retrying in %.1fs after: %s", wait, error)
    time.sleep(wait)


# --- tus ----------------------------------------------------------------------------------------


class _Retry(Exception):
    """A transient answer: ask HEAD for the offset and go on after a pause."""

    def __init__(self, error: LMVPError, retry_after: float | None) -> None:
        super().__init__(str(error))
        self.error = error
        self.retry_after = retry_after


class _Gone(Exception):
    """The server no longer knows the upload (finished, expired or aborted)."""


class _Stopped(Exception):
    """The caller asked the upload to stop (the project turned out to hold the bytes)."""


# The header in which the server names the sha256 of the blob a finished upload became.
_BLOB_SHA256 = "LMVP-Blob-Sha256"


@dataclass
class _TusUpload:
    http: HTTP
    project: str
    path: Path
    # "" when the upload declares no hash: the server then names the blob's hash at the end.
    sha256: str
    size: int
    progress: Progress | None
    state: _UploadState
    # For an upload without a declared hash: waits for the caller's own hash of the file.
    digest: Callable[[], str] | None = None
    # Set by the caller to stop sending and abort the upload.
    stop: threading.Event | None = None
    # How far the caller's progress has been told the file is on the server.
    reported: int = 0
    # The sha256 under which the server stored the blob, once it says so.
    stored_as: str | None = None
    stopped: bool = False
    # The server's socket for uploads from its own machine, when it named one.
    local: str | None = None

    def run(self) -> None:
        url = self.state.load()
        offset: int | None = None
        attempt = 0
        while True:
            try:
                if self.stop is not None and self.stop.is_set():
                    raise _Stopped
                if self.http.throttle is not None:
                    self.http.throttle.check()
                if url is None:
                    url = self._create()
                    self.state.save(url)
                    offset = 0
                elif offset is None:
                    offset = self._head(url)
                self._report_position(offset)
                if offset >= self.size:
                    break
                before = offset
                offset = self._append(url, offset)
                if offset > before:
                    attempt = 0
            except _Stopped:
                self.stopped = True
                if url is not None:
                    self._abort(url)
                break
            except _Gone:
                self.state.clear()
                url, offset = None, None
                sha256 = self.sha256 or (self.digest() if self.digest else "")
                if self.stored_as or (
                    sha256 and sha256 not in missing_blobs(self.http, self.project, [sha256])
                ):
                    # The last PATCH did land; only its answer was lost.
                    self.stored_as = self.stored_as or sha256
                    self._report_position(self.size)
                    break
                log.info("upload of %s is gone from the server; starting over", self.path)
            except _Retry as exc:
                backoff(self.http, attempt, exc.error, exc.retry_after)
                attempt += 1
                offset = None
            except _TRANSIENT as exc:
                backoff(self.http, attempt, exc, None)
                attempt += 1
                offset = None
        self.state.clear()

    def report_position(self, position: int) -> None:
        self._report_position(position)

    def _abort(self, url: str) -> None:
        """Tell the server to drop the upload's bytes (tus termination); best effort."""
        try:
            with _connection(self.http) as conn:
                conn.request("DELETE", url, headers=self._headers())
                conn.getresponse().read()
        except _TRANSIENT as exc:
            log.info("could not abort upload %s (it expires on the server): %s", url, exc)

    def _report_position(self, position: int) -> None:
        if self.progress and position != self.reported:
            self.progress(position - self.reported)
        self.reported = position

    def _create(self) -> str:
        meta = {"project": self.project, "filename": self.path.name}
        if self.sha256:
            meta["sha256"] = self.sha256
        headers = {
            **self._headers(),
            "Upload-Length": str(self.size),
            "Upload-Metadata": ",".join(
                f"{k} {base64.b64encode(v.encode()).decode()}" for k, v in meta.items()
            ),
        }
        with _connection(self.http) as conn:
            conn.request("POST", api_path(self.http, "/uploads"), headers=headers)
            response = conn.getresponse()
            if response.status != 201:
                raise self._error(response)
            response.read()
            location = response.getheader("Location")
            self._read_answer(response)
        if not location:
            raise ServerUnavailable(f"server {self.http.server} created an upload without a URL")
        # Keep only the path: the server builds the URL from the Host it was sent, which need
        # not be how this client reaches it (a proxy, a container port).
        parts = urlsplit(urljoin(api_path(self.http, "/uploads/"), location))
        return parts.path + (f"?{parts.query}" if parts.query else "")

    def _head(self, url: str) -> int:
        with _connection(self.http) as conn:
            conn.request("HEAD", url, headers=self._headers())
            response = conn.getresponse()
            if response.status == 404:
                response.read()
                raise _Gone
            if response.status != 200:
                raise self._error(response)
            response.read()
            self._read_answer(response)
            return int(response.getheader("Upload-Offset", "0"))

    def _read_answer(self, response: HTTPResponse) -> None:
        self.stored_as = response.getheader(_BLOB_SHA256) or self.stored_as
        if local_upload.enabled():
            self.local = response.getheader(local_upload.HEADER) or None

    def _append(self, url: str, offset: int) -> int:
        """Send the file from `offset` on; returns the server's new offset. A server on this
        machine is handed the file itself, unless a bandwidth limit is set (only the HTTP path
        paces its bytes)."""
        throttle = self.http.throttle
        if self.local is None or (throttle is not None and throttle.limit is not None):
            return self._patch(url, offset)
        try:
            return self._append_local(self.local, url, offset)
        except local_upload.Unreachable as exc:
            log.info("the server's local upload socket is out of reach (%s): using HTTP", exc)
            self.local = None
            return offset

    def _append_local(self, name: str, url: str, offset: int) -> int:
        throttle = self.http.throttle

        def advanced(position: int) -> None:
            self._report_position(position)
            if self.stop is not None and self.stop.is_set():
                raise _Stopped
            if throttle is not None:
                throttle.check()

        upload_id = urlsplit(url).path.rstrip("/").rsplit("/", 1)[-1]
        try:
            position, digest = local_upload.append(
                name,
                base_headers(self.http).get("Authorization", ""),
                upload_id,
                self.path,
                offset,
                self.size,
                advanced,
                timeout=SOCKET_TIMEOUT,
                finish_timeout=_FINISH_TIMEOUT,
            )
        except local_upload.Refused as exc:
            if exc.status == 404:
                raise _Gone from None
            body = {"error": {"code": exc.code, "message": exc.message}}
            error = error_from_response(httpx.Response(exc.status, json=body), self.http.server)
            raise self._classify(exc.status, error, None) from None
        self.stored_as = digest or self.stored_as
        return position

    def _patch(self, url: str, offset: int) -> int:
        count = self.size - offset
        with _connection(self.http) as conn, self.path.open("rb") as body:
            conn.putrequest("PATCH", url, skip_accept_encoding=True)
            headers = {
                **self._headers(),
                "Upload-Offset": str(offset),
                "Content-Length": str(count),
                "Content-Type": "application/offset+octet-stream",
            }
            for name, value in headers.items():
                conn.putheader(name, value)
            conn.endheaders()
            sock = conn.sock
            assert sock is not None
            sent = 0
            throttle = self.http.throttle
            slice_size = throttle.slice_size(_SENDFILE_SLICE) if throttle else _SENDFILE_SLICE
            while sent < count:
                n = sock.sendfile(body, offset + sent, min(slice_size, count - sent))
                if n == 0:
                    raise IntegrityError(
                        f"{self.path} got shorter while it was uploaded: it was {self.size} "
                        "bytes; wait until it is written completely, then upload again"
                    )
                sent += n
                self._report_position(offset + sent)
                if self.stop is not None and self.stop.is_set():
                    raise _Stopped
                if throttle is not None:
                    throttle.spend(n)
            sock.settimeout(_FINISH_TIMEOUT)
            response = conn.getresponse()
            if response.status == 404:
                response.read()
                raise _Gone
            if response.status != 204:
                raise self._error(response)
            response.read()
            self._read_answer(response)
            return int(response.getheader("Upload-Offset", str(offset + sent)))

    def _headers(self) -> dict[str, str]:
        return {**base_headers(self.http), "Tus-Resumable": "1.0.0"}

    def _error(self, response: HTTPResponse) -> Exception:
        retry_after = parse_retry_after(response.getheader("Retry-After"))
        return self._classify(response.status, error_from_raw(self.http, response), retry_after)

    def _classify(self, status: int, error: LMVPError, retry_after: float | None) -> Exception:
        if status == 460:
            self.state.clear()
            return IntegrityError(
                f"{self.path} changed while it was uploaded (the server received bytes that do "
                f"not hash to {self.sha256}); nothing was stored. Upload it again once it is no "
                "longer being written.",
                code=error.code,
                status=460,
            )
        if status in _RETRY_STATUS:
            return _Retry(error, retry_after)
        return error


@contextlib.contextmanager
def _connection(http: HTTP) -> Iterator[HTTPConnection]:
    conn = open_connection(http)
    try:
        yield conn
    finally:
        conn.close()


class _UploadState:
    """The tus URL of one upload (server, project, sha256), kept in a small JSON file."""

    def __init__(self, directory: Path, server: str, project: str, sha256: str) -> None:
        key = hashlib.sha256(f"{server}\n{project}\n{sha256}".encode()).hexdigest()[:40]
        self.directory = directory
        self.file = directory / f"{key}.json"
        self.lock_file = directory / f"{key}.lock"
        self.identity = {"server": server, "project": project, "sha256": sha256}

    @contextlib.contextmanager
    def locked(self) -> Iterator[bool]:
        """Hold the upload's lock (one process at a time sends one blob); yields whether it had
        to wait for another holder."""
        self.directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.lock_file, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            waited = False
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                waited = True
                fcntl.flock(fd, fcntl.LOCK_EX)
            yield waited
        finally:
            os.close(fd)

    def load(self) -> str | None:
        try:
            data: dict[str, Any] = json.loads(self.file.read_text())
        except (OSError, ValueError):
            return None
        if any(data.get(k) != v for k, v in self.identity.items()):
            return None
        url = data.get("url")
        return url if isinstance(url, str) and url.startswith("/") else None

    def save(self, url: str) -> None:
        tmp = self.file.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps({**self.identity, "url": url, "created": time.time()}))
        os.replace(tmp, self.file)

    def clear(self) -> None:
        self.file.unlink(missing_ok=True)


# --- disk writeback, shared with lmvp.cache -----------------------------------------------------


def _load_sync_file_range() -> Any:
    try:
        fn = ctypes.CDLL("libc.so.6", use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    return fn


_sync_file_range = _load_sync_file_range()


def start_writeback(fd: int, offset: int, length: int) -> None:
    """Start writing `length` bytes at `offset` to disk now (SYNC_FILE_RANGE_WRITE), so that
    the final fsync has little left to do; a no-op where the call does not exist."""
    if _sync_file_range is not None:
        _sync_file_range(fd, offset, length, 2)
