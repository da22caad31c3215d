"""Checks on a version's manifest: every path must be a safe, unique, relative POSIX path.

A path is later joined onto a user's folder by `lmvp.download`, so anything that could climb out
of that folder or mean different things on different systems is refused here, at the door.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence

from lmvp_server.errors import APIError
from lmvp_server.schemas import FileEntry

MAX_PATH_BYTES = 1024


def path_problem(path: str) -> str | None:
    """What is wrong with `path` as a manifest path, or None when it is fine."""
    if not path:
        return "is empty"
    if len(path.encode("utf-8", "surrogatepass")) > MAX_PATH_BYTES:
        return f"is longer than {MAX_PATH_BYTES} bytes"
    if "\x00" in path:
        return "contains a NUL byte"
    if any(unicodedata.category(ch) in ("Cc", "Cf", "Cs") for ch in path):
        return "contains a control character"
    if "\\" in path:
        return "contains a backslash (use '/' between folders)"
    if path.startswith("/"):
        return "is absolute (paths are relative to the version's root)"
    if len(path) >= 2 and path[1] == ":" and path[0].isalpha():
        return "starts with a drive letter"
    parts = path.split("/")
    if any(part == ".." for part in parts):
        return "contains a '..' segment"
    if any(part in ("", ".") for part in parts):
        return "contains an empty or '.' segment"
    return None


def validate_manifest(files: Sequence[FileEntry]) -> None:
    """Raise a 422 listing every bad or repeated path."""
    problems: list[dict[str, str]] = []
    seen: set[str] = set()
    for entry in files:
        problem = path_problem(entry.path)
        # Two paths that differ only in Unicode normalisation are one file on macOS.
        key = unicodedata.normalize("NFC", entry.path)
        if problem is None and key in seen:
            problem = "appears more than once"
        seen.add(key)
        if problem:
            problems.append({"path": entry.path, "problem": problem})
    if problems:
        first = problems[0]
        raise APIError(
            422,
            "invalid_manifest",
            f"file path {first['path']!r} {first['problem']}"
            + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""),
            details={"paths": problems},
        )
