"""One file's tus 1.0 upload: create it, ask the server's offset (HEAD), append from there
(PATCH, the body sent with `sendfile(2)`, or the open file itself to a server on this machine:
`lmvp.local_upload`), resume after a dropped connection or a refusal worth retrying, abort.

An upload remembers its tus URL in a small state file, so a dropped connection, a crash or a
later process resumes at the offset the server reports instead of sending the file again.
`lmvp.transfer` decides what to upload; this module carries one upload through.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.client import HTTPResponse
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

import httpx
import platformdirs

from lmvp import links, local_upload
from lmvp._http import HTTP, RETRY_STATUS, TransientAnswer, error_from_response, failed_answer
from lmvp.errors import IntegrityError, LMVPError, ServerUnavailable
from lmvp.private_files import private_dir, write_private
from lmvp.types import Progress
from lmvp.wire import (
    SOCKET_TIMEOUT,
    TRANSIENT,
    api_path,
    base_headers,
    connection,
    error_from_raw,
    send_range,
    transfer_attempts,
)

__all__ = ["TusUpload", "UploadState", "default_state_dir"]

log = logging.getLogger(__name__)

# sendfile is called in slices this big so that progress is reported while a large body goes out.
_SENDFILE_SLICE = 16 * 1024 * 1024
# The server answers a finished PATCH only after storing the blob, so the wait for that answer
# gets more room than SOCKET_TIMEOUT.
_FINISH_TIMEOUT = 600.0
# Answers after which the same upload is tried again (after HEAD tells the offset): those of
# every request (the server is busy or failing), and two of uploads: another request still
# holds the upload (423), or the offset moved under us (409).
_RETRY_STATUS = RETRY_STATUS | {409, 423}


def default_state_dir() -> Path:
    """Where upload state files live: `<user state dir>/lmvp/uploads`."""
    return Path(platformdirs.user_state_dir("lmvp")) / "uploads"


class _Gone(Exception):
    """The server no longer knows the upload (finished, expired or aborted)."""


class _Stopped(Exception):
    """The caller asked the upload to stop (the project turned out to hold the bytes)."""


# The header in which the server names the sha256 of the blob a finished upload became.
_BLOB_SHA256 = "LMVP-Blob-Sha256"


@dataclass
class TusUpload:
    http: HTTP
    project: str
    path: Path
    # "" when the upload declares no hash: the server then names the blob's hash at the end.
    sha256: str
    size: int
    progress: Progress | None
    state: UploadState
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
    # Whether the project holds a blob: asked when the server no longer knows the upload, to
    # tell a last PATCH that landed (and only its answer was lost) from an upload that expired.
    held: Callable[[str], bool] | None = None

    def run(self) -> None:
        url = self.state.load()
        offset: int | None = None
        tries = transfer_attempts(self.http)
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
                    tries.progressed()
            except _Stopped:
                self.stopped = True
                if url is not None:
                    self._abort(url)
                break
            except _Gone:
                self.state.clear()
                url, offset = None, None
                sha256 = self.sha256 or (self.digest() if self.digest else "")
                if self.stored_as or (sha256 and self.held is not None and self.held(sha256)):
                    # The last PATCH did land; only its answer was lost.
                    self.stored_as = self.stored_as or sha256
                    self._report_position(self.size)
                    break
                log.info("upload of %s is gone from the server; starting over", self.path)
            except TransientAnswer as exc:
                # Ask HEAD for the offset and go on, after a pause.
                tries.failed(exc.error, exc.retry_after)
                offset = None
            except TRANSIENT as exc:
                tries.failed(exc)
                offset = None
        self.state.clear()

    def report_position(self, position: int) -> None:
        self._report_position(position)

    def _abort(self, url: str) -> None:
        """Tell the server to drop the upload's bytes (tus termination); best effort."""
        try:
            with connection(self.http) as conn:
                conn.request("DELETE", url, headers=self._headers())
                conn.getresponse().read()
        except TRANSIENT as exc:
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
        with connection(self.http) as conn:
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
        with connection(self.http) as conn:
            conn.request("HEAD", url, headers=self._headers())
            response = conn.getresponse()
            self._take_answer(response, 200)
            return int(response.getheader("Upload-Offset", "0"))

    def _take_answer(self, response: HTTPResponse, expected: int) -> None:
        """Read the answer to a HEAD or PATCH: the upload is gone (404), refused (not
        `expected`), or here is what the server says of it."""
        if response.status == 404:
            response.read()
            raise _Gone
        if response.status != expected:
            raise self._error(response)
        response.read()
        self._read_answer(response)

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
            raise self._classify(exc.status, error) from None
        self.stored_as = digest or self.stored_as
        return position

    def _patch(self, url: str, offset: int) -> int:
        count = self.size - offset
        with connection(self.http) as conn, self.path.open("rb") as body:
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
            started = time.perf_counter()
            throttle = self.http.throttle
            slice_size = throttle.slice_size(_SENDFILE_SLICE) if throttle else _SENDFILE_SLICE
            while sent < count:
                n = send_range(sock, body, offset + sent, min(slice_size, count - sent))
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
            self._take_answer(response, 204)
            # A bandwidth limit counts as the link: where it binds, chunks pay as they do there.
            links.record(self.http.server, "up", sent, time.perf_counter() - started)
            return int(response.getheader("Upload-Offset", str(offset + sent)))

    def _headers(self) -> dict[str, str]:
        return {**base_headers(self.http), "Tus-Resumable": "1.0.0"}

    def _error(self, response: HTTPResponse) -> Exception:
        error = error_from_raw(self.http, response)
        return self._classify(response.status, error, response.getheader("Retry-After"))

    def _classify(self, status: int, error: LMVPError, retry_after: str | None = None) -> Exception:
        if status == 460:
            self.state.clear()
            return IntegrityError(
                f"{self.path} changed while it was uploaded (the server received bytes that do "
                f"not hash to {self.sha256}); nothing was stored. Upload it again once it is no "
                "longer being written.",
                code=error.code,
                status=460,
            )
        return failed_answer(error, status, retry_after, retry_status=_RETRY_STATUS)


class UploadState:
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
        private_dir(self.directory)
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
        write_private(self.file, json.dumps({**self.identity, "url": url, "created": time.time()}))

    def clear(self) -> None:
        self.file.unlink(missing_ok=True)
