"""The `lmvp-desktop` entry point (the desktop issue fills it in)."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    print("lmvp-desktop: not yet: the desktop app arrives with the desktop issue", file=sys.stderr)
    return 1
