"""Uploads from clients on the server's own machine: the file itself instead of its bytes.

A client whose server runs on the same machine (the embedded default: the desktop app, its
daemon and a local server) need not push a checkpoint through a TCP socket, where receiving it
in Python costs more than the disk. It opens the file and hands the server the descriptor over
a Unix socket (`SCM_RIGHTS`); the server copies it into the upload's partial file with
`copy_file_range` (a kernel copy, or a reflink where the filesystem has them) and hashes what it
wrote, on another core, a slice behind the copy. It is the same tus upload as a `PATCH`: same
authorisation, offset check, lock, hash cache and completion; bytes copied before an
interruption stay, and the upload may go on over either path.

The socket has an abstract address (Linux: no file to clean up, no path-length limit) with a
random name, which the server gives in the `LMVP-Local-Uploads` header of its tus answers to
clients that connect from this machine. Each request carries the caller's token and is checked
like a `PATCH`; the descriptor proves the caller can read the file, and must be a regular file.
A client whose server is elsewhere cannot reach the name, and sends over HTTP.

The exchange, one per connection: the client sends a line of JSON `{"authorization": "Bearer
...", "upload": ID, "offset": N}` with the descriptor attached. The server answers with JSON
lines: `{"offset": N}` as the copy advances, then `{"offset": N, "sha256": HEX or null}` (the
blob's hash once the last byte is in) or `{"offset": N, "error": {"status", "code",
"message"}}`. A client that closes the socket stops the copy at the next slice.

Any local user can connect, token or not, so what a connection may cost is bounded: at most
`MAX_CONNECTIONS` are served at once (each has a thread and a descriptor); one past that is
accepted and closed at once, and refusals are logged once a minute, not one by one. The
request line must be in within `_REQUEST_SECONDS` of the connection, however slowly its bytes
come (the timeout is not renewed by each byte), and a client that leaves before that costs a
debug line, not a traceback. An audit's 1,100 connections trickling a byte every 3 s had taken
a server limited to 1,024 descriptors to all of them, and its HTTP side with it.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import json
import logging
import mmap
import os
import queue
import secrets
import socket
import socketserver
import stat
import sys
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from lmvp_server.errors import APIError
from lmvp_server.tus import tus_error_for
from lmvp_server.upload_errors import UploadError
from lmvp_server.upload_lifecycle import DISK_FULL
from lmvp_server.upload_session import AppendSession, authorize_append
from lmvp_server.upload_staging import let_go_asked
from lmvp_server.upload_writer import BUFFER_BYTES, start_writeback

if TYPE_CHECKING:
    from lmvp_server.context import ServerContext

log = logging.getLogger(__name__)

HEADER = "LMVP-Local-Uploads"
# The copy advances (and is reported, and may be stopped) a slice at a time.
_SLICE = 64 * 1024 * 1024
# Slices copied but not yet hashed: bounds how far the hash lags (it reads the page cache).
_HASH_LAG_SLICES = 4
_REQUEST_LIMIT = 64 * 1024
# The whole request line must arrive within this time of the connection.
_REQUEST_SECONDS = 10.0
# Connections served at once; more are closed as soon as they are accepted. An honest client
# sends one file at a time per upload, and a handful of uploads at once.
MAX_CONNECTIONS = 64
# Refused connections are logged at most this often.
_REFUSAL_LOG_SECONDS = 60.0
# Errors that mean copy_file_range cannot copy between these two files (another filesystem
# type, an old kernel): read and write instead.
_NO_KERNEL_COPY = frozenset({errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP})


class LocalUploads:
    """The Unix socket on which this server takes uploads from clients on its machine."""

    def __init__(self) -> None:
        self.name: str | None = None
        self._server: _Server | None = None

    def start(self, ctx: ServerContext) -> None:
        """Open the socket and serve it on a thread (Linux only), appending through `ctx`."""
        if not sys.platform.startswith("linux"):  # abstract socket names are Linux's
            return
        name = f"lmvp-uploads-{secrets.token_hex(16)}"
        server = _Server("\0" + name, _Handler, ctx)
        threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.2},
            name="lmvp-local-uploads",
            daemon=True,
        ).start()
        self._server, self.name = server, name
        log.info("taking uploads from this machine's clients on @%s", name)

    def stop(self) -> None:
        """Close the socket (connections being served finish on their threads)."""
        if self._server is not None:
            server, self._server, self.name = self._server, None, None
            server.shutdown()
            server.server_close()

    def headers_for(self, peer: str | None) -> dict[str, str]:
        """The header naming the socket, for a client connecting from this machine."""
        if self.name is None or not _is_loopback(peer):
            return {}
        return {HEADER: self.name}


def _is_loopback(host: str | None) -> bool:
    try:
        return host is not None and ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    block_on_close = False

    def __init__(
        self, address: str, handler: type[socketserver.BaseRequestHandler], ctx: ServerContext
    ) -> None:
        super().__init__(address, handler)
        self.ctx = ctx
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        self._refusals = _RefusalLog()

    def verify_request(self, request: Any, client_address: Any) -> bool:
        """Serve the connection if a slot is free; else it is closed right away."""
        if self._slots.acquire(blocking=False):
            return True
        self._refusals.note()
        return False

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.exception("local upload socket: a connection failed")


class _RefusalLog:
    """Counts refused connections and says so in the log once per `_REFUSAL_LOG_SECONDS`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._count = 0
        self._logged_at = -_REFUSAL_LOG_SECONDS

    def note(self) -> None:
        with self._lock:
            self._count += 1
            now = time.monotonic()
            if now - self._logged_at < _REFUSAL_LOG_SECONDS:
                return
            count, self._count, self._logged_at = self._count, 0, now
        log.warning(
            "local upload socket: %d at once are being served; refused %d more connection(s) "
            "(next report in %.0f s at the earliest). Many connections from this machine's "
            "users that send nothing look like an attack on the server's descriptors.",
            MAX_CONNECTIONS,
            count,
            _REFUSAL_LOG_SECONDS,
        )


class _Handler(socketserver.BaseRequestHandler):
    request: socket.socket
    server: _Server

    def handle(self) -> None:
        conn = self.request
        fd = -1
        offset = 0
        try:
            try:
                fd, fields = _read_request(conn, time.monotonic() + _REQUEST_SECONDS)
            except OSError as exc:  # timed out, or the client went away: nothing to answer
                log.debug("local upload socket: no request read (%s)", exc)
                return
            # The request is in: from here the copy's own pace sets the socket's timeouts.
            conn.settimeout(_REQUEST_SECONDS)
            offset = fields["offset"]
            offset, digest = append_from_descriptor(
                self.server.ctx,
                fields["authorization"],
                fields["upload"],
                offset,
                fd,
                lambda position: _send(conn, {"offset": position}),
            )
            _send(conn, {"offset": offset, "sha256": digest})
        except _ClientGone:
            return
        except (UploadError, APIError) as exc:
            _send_quietly(conn, _error_answer(exc, offset))
        except Exception:
            log.exception("local upload failed")
            error = {
                "status": 500,
                "code": "internal_error",
                "message": "the server failed; the error is in its log",
            }
            _send_quietly(conn, {"offset": offset, "error": error})
        finally:
            if fd >= 0:
                os.close(fd)


class _ClientGone(Exception):
    """The client closed the socket: it stopped the upload, or it died."""


class _Refused(APIError):
    """A request this socket refuses for reasons of its own (not the upload's): a malformed
    request, a descriptor it cannot copy from, a file shorter than declared (`offset`: where
    the copy stopped)."""

    def __init__(self, status: int, code: str, message: str, offset: int | None = None) -> None:
        super().__init__(status, code, message)
        self.offset = offset


def _error_answer(exc: UploadError | APIError, offset: int) -> dict[str, Any]:
    """The answer to a refused request: the offset the upload stays at (the one the request
    named, unless the error knows better) and the error's status, code and message, as a
    PATCH would have them (domain errors map through `tus_error_for`; the token's and the
    role's are the API's own)."""
    at: int | None = None
    if isinstance(exc, UploadError):
        at, exc = exc.held, tus_error_for(exc)
    elif isinstance(exc, _Refused):
        at = exc.offset
    error = {"status": exc.status, "code": exc.code, "message": exc.message}
    return {"offset": offset if at is None else at, "error": error}


def _send(conn: socket.socket, message: dict[str, Any]) -> None:
    try:
        conn.sendall(json.dumps(message).encode() + b"\n")
    except OSError as exc:
        raise _ClientGone from exc


def _send_quietly(conn: socket.socket, message: dict[str, Any]) -> None:
    with contextlib.suppress(_ClientGone):
        _send(conn, message)


def _bad_request(message: str) -> _Refused:
    return _Refused(400, "invalid_local_upload", message)


def _read_request(conn: socket.socket, deadline: float) -> tuple[int, dict[str, Any]]:
    """The descriptor and the fields of the request line, which must be in by `deadline` (a
    `time.monotonic()`; TimeoutError past it)."""
    _until(conn, deadline)
    data, fds, _flags, _addr = socket.recv_fds(conn, _REQUEST_LIMIT, 1)
    fd = fds[0] if fds else -1
    for extra in fds[1:]:
        os.close(extra)
    try:
        while not data.endswith(b"\n"):
            _until(conn, deadline)
            more = conn.recv(_REQUEST_LIMIT)
            if not more or len(data) + len(more) > _REQUEST_LIMIT:
                raise _bad_request("the request must be one line of JSON, ended by a newline")
            data += more
        try:
            fields = json.loads(data)
        except ValueError:
            raise _bad_request("the request is not JSON") from None
        if not (
            isinstance(fields, dict)
            and isinstance(fields.get("authorization"), str)
            and isinstance(fields.get("upload"), str)
            and isinstance(fields.get("offset"), int)
            and fields["offset"] >= 0
        ):
            raise _bad_request(
                "the request needs 'authorization' (a string), 'upload' (the upload's id) and "
                "'offset' (a non-negative integer)"
            )
        if fd < 0:
            raise _bad_request("no file descriptor came with the request")
    except BaseException:
        if fd >= 0:
            os.close(fd)
        raise
    return fd, fields


def _until(conn: socket.socket, deadline: float) -> None:
    """Let the next read on `conn` wait only until `deadline`."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("the request line did not come in time")
    conn.settimeout(left)


def append_from_descriptor(
    ctx: ServerContext,
    authorization: str,
    upload_id: str,
    offset: int,
    source: int,
    report: Callable[[int], None],
) -> tuple[int, str | None]:
    """Append the rest of the upload from the file open at `source` (its bytes from `offset`
    on), calling `report(position)` after each slice; returns the new offset and, once the
    upload is complete, the stored blob's sha256. Raises `UploadError`s and the API's
    authorisation errors as a PATCH would, `_Refused` for what only this socket refuses, and
    `_ClientGone` from `report` after keeping what was copied."""
    upload = authorize_append(ctx, authorization, upload_id)
    if not stat.S_ISREG(os.fstat(source).st_mode):
        raise _bad_request("the descriptor must be a regular file open for reading")
    with AppendSession.open(ctx, upload) as append:
        append.lock_blocking()
        held = append.begin(offset)
        hasher = append.cached_hasher() or append.rehash()
        copy = _HashingCopy(source, append.fd, held, hasher)

        def report_unless_superseded(position: int) -> None:
            # A newer request for the upload, of any worker, asked this one to let go.
            if let_go_asked(append.path):
                raise _Refused(
                    409,
                    "upload_superseded",
                    "a newer request for this upload took over; ask HEAD for the offset",
                    position,
                )
            report(position)

        try:
            copy.run(upload.length, report_unless_superseded)
        except _DiskFull:
            raise append.drop() from None
        finally:
            if append.fd >= 0:  # not dropped: keep what was copied and hashed
                kept = append.keep(copy.hashed, hasher if copy.hash_failed is None else None)
        if kept < copy.hashed:  # the copied bytes could not be made durable: a full disk
            raise append.drop()
        return kept, append.complete(kept, hasher)


class _HashingCopy:
    """Copies `source` into `target` from `start` on, a slice at a time, while a thread hashes
    each copied slice from `target` (what was written, not what was meant to be)."""

    def __init__(self, source: int, target: int, start: int, hasher: Any) -> None:
        self.source = source
        self.target = target
        self.copied = start
        self.hashed = start
        self.hasher = hasher
        self.hash_failed: Exception | None = None
        self._kernel_copy = True
        self._slices: queue.Queue[tuple[int, int] | None] = queue.Queue(_HASH_LAG_SLICES)

    def run(self, end: int, report: Callable[[int], None]) -> None:
        hashing = threading.Thread(target=self._hash_slices, name="lmvp-local-hash", daemon=True)
        hashing.start()
        try:
            while self.copied < end:
                n = self._copy_slice(min(_SLICE, end - self.copied))
                if n == 0:
                    raise _Refused(
                        400,
                        "file_too_short",
                        f"the file ended after {self.copied} bytes of the {end} the upload "
                        "declared: it was changed while it was sent; upload it again once it "
                        "is written completely",
                        self.copied,
                    )
                start_writeback(self.target, self.copied, n)
                self._slices.put((self.copied, n))
                self.copied += n
                report(self.copied)
        finally:
            self._slices.put(None)
            hashing.join()
        if self.hash_failed is not None:
            raise self.hash_failed

    def _copy_slice(self, count: int) -> int:
        at = self.copied
        try:
            if self._kernel_copy:
                try:
                    return os.copy_file_range(self.source, self.target, count, at, at)
                except OSError as exc:
                    if exc.errno not in _NO_KERNEL_COPY:
                        raise
                    self._kernel_copy = False
            return self._read_write(count, at)
        except OSError as exc:
            raise _copy_error(exc, at) from exc

    def _read_write(self, count: int, at: int) -> int:
        buffer = bytearray(min(count, BUFFER_BYTES))
        view = memoryview(buffer)
        done = 0
        while done < count:
            n = os.preadv(self.source, [view[: min(len(buffer), count - done)]], at + done)
            if n == 0:
                break
            written = 0
            while written < n:
                written += os.pwrite(self.target, view[written:n], at + done + written)
            done += n
        return done

    def _hash_slices(self) -> None:
        while (item := self._slices.get()) is not None:
            if self.hash_failed is not None:
                continue
            at, count = item
            try:
                self._hash_range(at, count)
                self.hashed = at + count
            except (OSError, ValueError) as exc:
                self.hash_failed = _copy_error(exc, at) if isinstance(exc, OSError) else exc

    def _hash_range(self, at: int, count: int) -> None:
        """Hash `count` bytes of the target at `at`, mapped rather than read: a copy the less,
        which made hashing (the slower half of the pipeline) a tenth faster. Only this request
        writes the file, under its lock, and only what was copied is mapped."""
        base = at - at % mmap.ALLOCATIONGRANULARITY
        flags = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)
        with (
            mmap.mmap(self.target, at - base + count, flags, mmap.PROT_READ, offset=base) as mapped,
            memoryview(mapped) as whole,
            whole[at - base :] as part,
        ):
            self.hasher.update(part)


class _DiskFull(Exception):
    """A write failed for want of space: the upload is dropped."""


def _copy_error(exc: OSError, at: int) -> Exception:
    if exc.errno in DISK_FULL:
        return _DiskFull()
    if exc.errno in (errno.EBADF, errno.EISDIR, errno.EINVAL):
        return _bad_request(f"the descriptor cannot be read as a file ({exc.strerror})")
    log.error("local upload: copy failed at byte %d: %s", at, exc)
    return _Refused(500, "copy_failed", f"the server could not copy the file ({exc.strerror})")


__all__ = ["HEADER", "LocalUploads", "append_from_descriptor"]
