"""Limits on a request's head (request line and headers), enforced while it arrives.

uvicorn serves HTTP/1.1 with httptools (llhttp), which sets no limit of its own on headers: a
16 MiB header was read and answered, and two connections sending unfinished 128 MiB headers
grew the server by 300 MiB it never gave back. The limit has to hold while the bytes arrive,
before the app ever sees a request: an ASGI middleware runs only once the whole head is in
memory. `BoundedHeadersProtocol` is uvicorn's httptools protocol counting the bytes of each
request's head as they are read; past `MAX_HEAD_BYTES`, or past `MAX_HEADERS` header fields, it
answers 431 Request Header Fields Too Large (with the project's JSON error body) and closes the
connection, so the parser never holds more than the limit.

Bodies are not counted here (uploads stream gigabytes); `body_limit` caps JSON bodies.
"""

from __future__ import annotations

import json
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

# Browsers send 1-8 KiB of headers; nginx's default for a whole head is 8 KiB per line and
# 32 KiB in all, Node's 16 KiB.
MAX_HEAD_BYTES = 64 * 1024
MAX_HEADERS = 100


def _refusal(message: str) -> bytes:
    body = json.dumps({"error": {"code": "headers_too_large", "message": message}}).encode()
    return (
        b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
        b"content-type: application/json\r\n"
        b"content-length: " + str(len(body)).encode() + b"\r\n"
        b"connection: close\r\n\r\n" + body
    )


_TOO_LONG = _refusal(
    f"the request line and headers may take at most {MAX_HEAD_BYTES} bytes; send less in headers"
)
_TOO_MANY = _refusal(f"a request may carry at most {MAX_HEADERS} header fields")


class BoundedHeadersProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a bounded request head (see the module)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._reading_head = True
        self._head_bytes = 0
        self._header_count = 0
        self._refused = False

    def data_received(self, data: bytes) -> None:
        while data and not self._refused:
            if not self._reading_head:
                super().data_received(data)
                return
            room = MAX_HEAD_BYTES - self._head_bytes
            # Feed what may still belong to the head; the parser says whether it ended there
            # (a small head and the start of a large body often come in one read).
            piece, data = data[:room], data[room:]
            self._head_bytes += len(piece)
            if piece:
                super().data_received(piece)
            if self.transport.is_closing():
                return
            if data and self._reading_head:
                self._refuse(_TOO_LONG)

    def on_message_begin(self) -> None:
        self._reading_head = True
        self._header_count = 0
        super().on_message_begin()

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_count += 1
        if self._header_count <= MAX_HEADERS:
            super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._reading_head = False
        self._head_bytes = 0
        if self._header_count > MAX_HEADERS:
            self._refuse(_TOO_MANY)
            return
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        if not self._refused:
            super().on_body(body)

    def on_message_complete(self) -> None:
        self._reading_head = True
        if not self._refused:
            super().on_message_complete()

    def _refuse(self, answer: bytes) -> None:
        """Answer 431 unless a response of this connection is under way (pipelining), then
        close: nothing more is read from it."""
        self._refused = True
        if self.cycle is None or self.cycle.response_complete:
            self.transport.write(answer)
        self.transport.close()


__all__ = ["MAX_HEADERS", "MAX_HEAD_BYTES", "BoundedHeadersProtocol"]
