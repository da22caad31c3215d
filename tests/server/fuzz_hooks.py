"""Schemathesis hooks of tests/server/test_fuzz.py (its config names this module): a tus PATCH
body, `application/offset+octet-stream`, and a chunk pack are sent as the octet streams they
are."""

from __future__ import annotations

import schemathesis

schemathesis.serializer.alias("application/offset+octet-stream", "application/octet-stream")
# A chunk pack (issue 17) is bytes as well.
schemathesis.serializer.alias("application/vnd.lmvp.chunk-pack", "application/octet-stream")
