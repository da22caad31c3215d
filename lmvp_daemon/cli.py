"""The `lmvp-daemon` command line (the daemon issue fills it in)."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    print("lmvp-daemon: not yet: the sync daemon arrives with the daemon issue", file=sys.stderr)
    return 1
