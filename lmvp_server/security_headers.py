"""The headers every answer carries so that a browser keeps the console to itself.

- `X-Frame-Options: DENY` and CSP `frame-ancestors 'none'`: no other page (another origin on the
  same host included) may frame the console and trick a click through it.
- `X-Content-Type-Options: nosniff`: a downloaded checkpoint or a JSON answer is never run as a
  script or rendered as HTML because its bytes look like one.
- A Content-Security-Policy allowing only the server's own scripts, styles and images: the
  console has no inline script or style (the run page's chart data is a `<script
  type="application/json">` block, which is data, not code), so an injected `<script>` would not
  run even if escaping ever failed.
- `Referrer-Policy: same-origin`: links out of the console do not carry its URLs (project and
  model names) to other sites.

The interactive API docs (`/api/v1/docs`) load Swagger UI from a CDN with an inline script, so
there the policy only forbids framing. A header the app already set is left alone.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
FRAMING_ONLY_POLICY = "frame-ancestors 'none'"

_COMMON = [
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
]


class SecurityHeaders:
    """ASGI middleware adding the headers above to every HTTP answer."""

    def __init__(self, app: ASGIApp, *, docs_prefix: str) -> None:
        self.app = app
        self.docs_prefix = docs_prefix

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        policy = (
            FRAMING_ONLY_POLICY
            if scope["path"].startswith(self.docs_prefix)
            else CONTENT_SECURITY_POLICY
        )
        extra = [*_COMMON, (b"content-security-policy", policy.encode())]

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                headers.extend((name, value) for name, value in extra if name not in present)
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


__all__ = ["CONTENT_SECURITY_POLICY", "SecurityHeaders"]
