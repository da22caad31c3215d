"""The wire of bulk transfers: raw `http.client` connections to the server, shared by uploads
(`lmvp.transfer`, `lmvp.tus`) and downloads (`lmvp.cache`).

File bytes never go through httpx: h11 parses and copies every chunk, which halves throughput.
JSON calls go through `lmvp._http.HTTP`; this module gives the raw side what it needs to talk
to the same server the same way: the connection, request targets and headers, the mapping of a
failed answer onto `lmvp.errors` (and onto `TransientAnswer` when it is worth trying again),
the attempts of a transfer under the retry policy of `lmvp._http`, sending a range of a file,
and early disk write-back.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import ssl
from collections.abc import Iterator
from http.client import HTTPConnection, HTTPException, HTTPResponse, HTTPSConnection
from typing import Any
from urllib.parse import urlsplit

import httpx

from lmvp._http import (
    API_PREFIX,
    HTTP,
    RETRY_STATUS,
    Attempts,
    error_from_response,
    failed_answer,
)
from lmvp._version import __version__
from lmvp.errors import LMVPError

__all__ = [
    "CHUNK",
    "SOCKET_TIMEOUT",
    "TRANSIENT",
    "answer_error",
    "api_path",
    "base_headers",
    "connection",
    "error_from_raw",
    "open_connection",
    "start_writeback",
    "transfer_attempts",
]

CHUNK = 4 * 1024 * 1024
# How long a socket may stay silent.
SOCKET_TIMEOUT = 60.0
# Failures after which a transfer is tried again (after asking where it stands).
TRANSIENT = (OSError, HTTPException)


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


def answer_error(
    http: HTTP, response: HTTPResponse, *, retry_status: frozenset[int] = RETRY_STATUS
) -> Exception:
    """What a failed `http.client` answer raises (its body is read): `TransientAnswer` when
    its status is in `retry_status`, else the mapped `LMVPError`."""
    error = error_from_raw(http, response)
    return failed_answer(
        error, response.status, response.getheader("Retry-After"), retry_status=retry_status
    )


def transfer_attempts(http: HTTP) -> Attempts:
    """The attempts of one transfer under the retry policy of `http`; once spent on lost
    connections, `ServerUnavailable` says that the bytes already sent are kept."""

    def unreachable(error: BaseException) -> str:
        return (
            f"lost the connection to {http.server} and could not get it back ({error}): check "
            "that the server is running, then try again; finished bytes are kept"
        )

    return Attempts(http.retry, unreachable)


@contextlib.contextmanager
def connection(http: HTTP) -> Iterator[HTTPConnection]:
    """`open_connection`, closed when the block ends."""
    conn = open_connection(http)
    try:
        yield conn
    finally:
        conn.close()


# --- sending a range of a file ------------------------------------------------------------------


# What a read of a file sent over TLS takes at a time (one buffer, encrypted and sent).
_TLS_READ = 1024 * 1024


def send_range(sock: Any, source: Any, offset: int, count: int) -> int:
    """Send up to `count` bytes of the open file `source` from `offset` on `sock`; returns how
    many went (0: the file ends before `offset`). Reads at explicit offsets, never through the
    file object's position, so threads may share `source`.

    Over plain TCP the kernel's sendfile moves the bytes. Over TLS, Python's `socket.sendfile`
    would fall back to seeking the file object and reading it 8 KiB at a time: a seek of another
    thread sharing it moved the read (chunks went out with other chunks' bytes), and the small
    reads cost CPU. There, `os.pread` reads a MiB at a time and `sendall` sends it."""
    if isinstance(sock, ssl.SSLSocket):
        data = os.pread(source.fileno(), min(_TLS_READ, count), offset)
        sock.sendall(data)
        return len(data)
    return int(sock.sendfile(source, offset, count))


# --- disk write-back ----------------------------------------------------------------------------


def _load_sync_file_range() -> Any:
    try:
        fn = ctypes.CDLL("libc.so.6", use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    return fn


_sync_file_range = _load_sync_file_range()
_SYNC_FILE_RANGE_WRITE = 2


def start_writeback(fd: int, offset: int, length: int) -> None:
    """Start writing `length` bytes at `offset` to disk now (SYNC_FILE_RANGE_WRITE), so that
    the final fsync has little left to do; a no-op where the call does not exist."""
    if _sync_file_range is not None:
        _sync_file_range(fd, offset, length, _SYNC_FILE_RANGE_WRITE)
