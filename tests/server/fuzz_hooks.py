"""Schemathesis hooks of tests/server/test_fuzz.py (its config names this module): a tus PATCH
body, `application/offset+octet-stream`, is sent as the octet stream it is."""

from __future__ import annotations

import schemathesis

schemathesis.serializer.alias("application/offset+octet-stream", "application/octet-stream")
