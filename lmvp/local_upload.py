"""Uploads to a server on this machine: hand it the open file instead of sending the bytes.

A server that runs here names a Unix socket in the `LMVP-Local-Uploads` header of its tus
answers. Over it the client passes the file's descriptor (`SCM_RIGHTS`) with the upload's id
and offset; the server copies the file in the kernel and hashes what it wrote, reporting the
offset as it goes (see `lmvp_server.local_uploads`). Nothing crosses a TCP socket, so a
checkpoint lands at about the speed of `cp`. When the socket cannot be reached (the server runs
in another network namespace, a container) the upload goes over HTTP as usual.

`LMVP_LOCAL_UPLOADS=0` sends over HTTP even to a server on this machine.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

HEADER = "LMVP-Local-Uploads"
_OFF = frozenset({"0", "false", "no", "off"})


class Unreachable(Exception):
    """The server's local upload socket cannot be reached from here: send over HTTP."""


class Refused(Exception):
    """The server refused or failed the local append; `status`, `code` and `message` as it said,
    `offset` what it holds now."""

    def __init__(self, error: dict[str, Any], offset: int) -> None:
        self.status = int(error.get("status", 500))
        self.code = str(error.get("code", "internal_error"))
        self.message = str(error.get("message", "the server failed"))
        self.offset = offset
        super().__init__(self.message)


def enabled() -> bool:
    """Whether uploads may use a local server's socket (Linux, and not switched off)."""
    wanted = os.environ.get("LMVP_LOCAL_UPLOADS", "1").strip().lower() not in _OFF
    return wanted and sys.platform.startswith("linux") and hasattr(socket, "send_fds")


def append(
    name: str,
    authorization: str,
    upload_id: str,
    path: Path,
    offset: int,
    length: int,
    on_offset: Callable[[int], None],
    *,
    timeout: float,
    finish_timeout: float,
) -> tuple[int, str | None]:
    """Have the server copy `path` from `offset` on into upload `upload_id`.

    `on_offset(position)` is called as the server's copy advances; an exception it raises
    closes the socket, which stops the server at its next slice (what it copied stays), and
    propagates. Returns the server's offset and, once the upload is complete, the sha256 of the
    blob it stored. The server may stay silent for `timeout` seconds while it copies, and for
    `finish_timeout` once the last byte is copied (it fsyncs and stores the blob). Raises
    `Unreachable` when the socket cannot be reached, `Refused` for the server's errors, and
    `OSError` when `path` cannot be opened or the connection breaks.
    """
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect("\0" + name)
        except OSError as exc:
            raise Unreachable(str(exc)) from exc
        with path.open("rb") as f:
            request = {"authorization": authorization, "upload": upload_id, "offset": offset}
            socket.send_fds(sock, [json.dumps(request).encode() + b"\n"], [f.fileno()])
        with sock.makefile("rb") as answers:
            for line in answers:
                message = json.loads(line)
                position = int(message["offset"])
                if "error" in message:
                    raise Refused(message["error"], position)
                if "sha256" in message:
                    return position, message["sha256"]
                on_offset(position)
                if position >= length:
                    sock.settimeout(finish_timeout)
    raise ConnectionError("the server closed the local upload socket before it was done")


__all__ = ["HEADER", "Refused", "Unreachable", "append", "enabled"]
