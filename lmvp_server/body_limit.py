"""A cap on JSON request bodies: only tus uploads and chunk packs may stream large bodies.

Without it a client could send gigabytes as "metadata" and the server would read them all into
memory before any check ran. Bodies are counted as they arrive, so a chunked body that never
declared its length is stopped at the cap as well.
"""

from __future__ import annotations

import re

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from lmvp_server.errors import APIError, error_response
from lmvp_server.numbers import count_or_none

DEFAULT_MAX_JSON_BODY = 16 * 1024 * 1024


def _too_large(limit: int) -> APIError:
    return APIError(
        413,
        "body_too_large",
        f"request bodies are limited to {limit} bytes here; upload files with tus at "
        "/api/v1/uploads and keep metadata small",
    )


class JSONBodyLimit:
    """ASGI middleware: bodies of requests outside `exempt_prefix` may be at most `limit`."""

    def __init__(
        self, app: ASGIApp, *, limit: int, exempt_prefix: str, exempt_pattern: str | None = None
    ) -> None:
        self.app = app
        self.limit = limit
        self.exempt_prefix = exempt_prefix
        # Other paths that stream large bodies and count them themselves (chunk packs).
        self.exempt_pattern = re.compile(exempt_pattern) if exempt_pattern else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["path"].startswith(self.exempt_prefix)
            or (self.exempt_pattern is not None and self.exempt_pattern.match(scope["path"]))
        ):
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length" and (count_or_none(value) or 0) > self.limit:
                await error_response(_too_large(self.limit))(scope, receive, send)
                return
        received = 0
        refused = False

        async def counted_receive() -> Message:
            nonlocal received, refused
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.limit:
                if not refused:
                    refused = True
                    await error_response(_too_large(self.limit))(scope, receive, send)
                # The app sees the client go away and stops reading; what it would answer is
                # dropped below, since the 413 has been sent.
                return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            if not refused:
                await send(message)

        await self.app(scope, counted_receive, guarded_send)
