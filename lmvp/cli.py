"""The `lmvp` command line (the client issue fills it in)."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    print("lmvp: not yet: the client commands arrive with the client issue", file=sys.stderr)
    return 1
