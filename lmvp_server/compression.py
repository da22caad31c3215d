"""gzip for big JSON answers that are served many times over (a model's version listing):
compressed once, kept beside the plain body, sent to every client that accepts it.

A 1,000-version listing is ~390 KiB of JSON and ~30 KiB gzipped. Sent plain, every copy costs
the proxy's TLS, the kernel's copies and the client's parsing of ten times the bytes, which on a
shared box (or a real network) outweighs the server's own work. Compressing each time would put
that cost on the server instead; the listing cache keeps the compressed body per revision, so
it is paid once. Blob downloads are never compressed here: checkpoints are their own business
(`lmvp.chunk_codec`).
"""

from __future__ import annotations

import gzip

__all__ = ["GZIP_MIN_BYTES", "accepts_gzip", "gzipped", "weak", "without_weakness"]

# Bodies under this go plain: the saving would not pay for the header and the client's work.
GZIP_MIN_BYTES = 4096
# zlib's default: within 5% of level 9's size on JSON listings, at a third of its time.
_LEVEL = 6


def accepts_gzip(accept_encoding: str | None) -> bool:
    """Whether an `Accept-Encoding` header accepts gzip (`gzip`, `x-gzip` or `*`, with a
    q-value above 0)."""
    for part in (accept_encoding or "").split(","):
        name, _, parameters = part.partition(";")
        if name.strip().lower() not in ("gzip", "x-gzip", "*"):
            continue
        q = 1.0
        for parameter in parameters.split(";"):
            key, _, value = parameter.partition("=")
            if key.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        if q > 0:
            return True
    return False


def gzipped(body: bytes) -> bytes:
    """`body` gzipped, the same bytes for the same body (no time stamp in the header)."""
    return gzip.compress(body, compresslevel=_LEVEL, mtime=0)


def weak(etag: str) -> str:
    """The ETag of the gzipped representation: the same tag, weak (RFC 9110 8.8.3: a strong one
    names exactly one sequence of bytes)."""
    return etag if etag.startswith("W/") else f"W/{etag}"


def without_weakness(if_none_match: str | None) -> str | None:
    """An `If-None-Match` tag as the server compares it: weak and strong name the same
    listing."""
    if if_none_match is None:
        return None
    tag = if_none_match.strip()
    return tag[2:] if tag.startswith("W/") else tag
