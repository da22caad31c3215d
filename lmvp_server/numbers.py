"""Whole numbers read from raw request text (headers, the local socket's fields), bounded.

`int()` on text a client controls is a trap twice over: CPython refuses more than 4,300 digits
with a ValueError (which surfaced as a 500, before authentication), and even below that a number
past 2**63 means nothing to the database. Every such parse goes through `parse_count`, which
answers a 400 naming the field, or `clamp_digits` where a large number has a meaning (a `Range`
that runs to the end of the file).
"""

from __future__ import annotations

from collections.abc import Mapping

from lmvp_server.errors import APIError

MAX_COUNT = 2**63 - 1
_MAX_DIGITS = len(str(MAX_COUNT))
_SHOWN = 40


def is_digits(text: str | bytes) -> bool:
    """True for plain ASCII digits (str.isdigit also accepts '²', which int() refuses)."""
    return bool(text) and text.isascii() and text.isdigit()


def count_or_none(text: str | bytes | None, maximum: int = MAX_COUNT) -> int | None:
    """The number `text` spells if it is plain digits and at most `maximum`, else None; never
    converts more digits than `maximum` has."""
    if text is None:
        return None
    if isinstance(text, bytes):
        text = text.decode("latin-1")
    text = text.strip()
    if not is_digits(text) or len(text.lstrip("0")) > len(str(maximum)):
        return None
    value = int(text)
    return value if value <= maximum else None


def parse_count(
    text: str | None,
    name: str,
    *,
    maximum: int = MAX_COUNT,
    code: str = "invalid_header",
    headers: Mapping[str, str] | None = None,
) -> int:
    """`text` as a non-negative integer of at most `maximum`, or a 400 that names `name`."""
    value = count_or_none(text, maximum)
    if value is None:
        shown = text
        if text is not None and len(text) > _SHOWN:
            shown = f"{text[:_SHOWN]}… ({len(text)} characters)"
        raise APIError(
            400,
            code,
            f"{name} must be a whole number from 0 to {maximum}, got {shown!r}",
            headers=dict(headers) if headers else None,
        )
    return value


def clamp_digits(text: str, ceiling: int = MAX_COUNT) -> int:
    """Plain digits as a number, any value past `ceiling` read as `ceiling`: for positions where
    "further than anything" is a valid request (the end of a `Range`)."""
    digits = text.lstrip("0")
    if len(digits) > _MAX_DIGITS:
        return ceiling
    return min(int(text or "0"), ceiling)
