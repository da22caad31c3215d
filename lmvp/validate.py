"""What the client accepts from a server before anything of it touches the disk.

A server's reply names folders and files on the user's machine: the cache keeps a version's
manifest at `manifests/<project>/<model>/<number>.json`, its blobs at `blobs/<sha256>`, and
`lmvp.download(..., local_dir=...)` writes each manifest path under the user's folder. A hostile
server, or anyone on a plain-HTTP path, could otherwise send `"project": "../../.."`, an
absolute path or `"number": "../x"` and write where it likes. So every value of a reply that
becomes part of a path is checked here, by the server's own rules (`lmvp_server.schemas` for
names, `lmvp_server.manifest` for file paths), and a reply that breaks them raises
`ProtocolError` before a byte is written. This module is the one place those rules live on the
client; `lmvp.cache` and `lmvp.fetch` call it.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from pathlib import PurePosixPath
from typing import Any

from lmvp.errors import ProtocolError
from lmvp.refs import ModelRef
from lmvp.types import FileEntry, Version

__all__ = [
    "MAX_PATH_BYTES",
    "checked_entries",
    "checked_version",
    "file_path",
    "model_name",
    "project_name",
    "sha256",
    "size",
    "version_from_reply",
    "version_number",
]

# The server's rules (lmvp_server/schemas.py: NAME_PATTERN, ProjectName, ModelName, Sha256;
# lmvp_server/manifest.py: path_problem). Keep them in step.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_PROJECT_MAX = 64
_MODEL_MAX = 128
_SHA256 = re.compile(r"[0-9a-f]{64}")
MAX_PATH_BYTES = 1024


def invalid_reply(problem: str) -> ProtocolError:
    """The error for a reply that breaks the protocol; `problem` says what was wrong."""
    return ProtocolError(
        f"the server sent an invalid reply: {problem}; nothing of it was written. Report this "
        "to the server's administrator (over plain http://, anyone on the network path can "
        "change replies: use https://)"
    )


def project_name(value: object) -> str:
    """A project name as the server's rules allow it, or `ProtocolError`."""
    return _name(value, "project", _PROJECT_MAX)


def model_name(value: object) -> str:
    """A model name as the server's rules allow it, or `ProtocolError`."""
    return _name(value, "model", _MODEL_MAX)


def version_number(value: object) -> int:
    """A version number: an integer of at least 1 (not a string, not a bool)."""
    if type(value) is not int or value < 1:
        raise invalid_reply(f"the version number {value!r} is not a whole number above 0")
    return value


def sha256(value: object) -> str:
    """A sha256 as the server writes it: 64 lowercase hex digits."""
    if not isinstance(value, str) or not _SHA256.fullmatch(value):
        raise invalid_reply(f"{value!r} is not a sha256 (64 lowercase hex digits)")
    return value


def size(value: object) -> int:
    """A size in bytes: an integer of at least 0 (not a string, not a bool)."""
    if type(value) is not int or value < 0:
        raise invalid_reply(f"the file size {value!r} is not a whole number of bytes")
    return value


def file_path(value: object) -> PurePosixPath:
    """A manifest path as a relative path that stays inside its folder.

    Refused like the server refuses them at publish: empty, longer than 1,024 bytes, NUL or
    other control characters, backslashes, absolute, a drive letter, `..`, `.` or empty
    segments."""
    problem = _path_problem(value)
    if problem is not None:
        raise invalid_reply(
            f"the file path {value!r} {problem}, which could write outside the version's folder"
        )
    assert isinstance(value, str)
    return PurePosixPath(*value.split("/"))


def checked_entries(files: Iterable[FileEntry]) -> list[tuple[PurePosixPath, FileEntry]]:
    """Each file of a manifest with its checked relative path; refuses a bad path, hash or
    size, two paths that are one file (also after Unicode normalisation, as on macOS), and a
    path that is both a file and another file's folder."""
    entries: list[tuple[PurePosixPath, FileEntry]] = []
    seen: set[str] = set()
    for entry in files:
        relative = file_path(entry.path)
        sha256(entry.sha256)
        size(entry.size)
        key = unicodedata.normalize("NFC", entry.path)
        if key in seen:
            raise invalid_reply(f"the manifest lists {entry.path!r} twice")
        seen.add(key)
        entries.append((relative, entry))
    folders = {
        unicodedata.normalize("NFC", str(parent))
        for relative, _ in entries
        for parent in relative.parents
        if str(parent) != "."
    }
    for key in seen:
        if key in folders:
            raise invalid_reply(f"the manifest lists {key!r} both as a file and as a folder")
    return entries


def checked_version(version: Version, asked: ModelRef | None = None) -> Version:
    """`version` when every name, number, path, hash and size in it is valid and, given the
    reference it answers, it is a version of that model (and that number); else
    `ProtocolError`."""
    project_name(version.project)
    model_name(version.model)
    version_number(version.number)
    size(version.size)
    if not isinstance(version.files, tuple) or not all(
        isinstance(f, FileEntry) for f in version.files
    ):
        raise invalid_reply("the version's file list is not a list of files")
    checked_entries(version.files)
    if asked is not None:
        if (version.project, version.model) != (asked.project, asked.model):
            raise invalid_reply(
                f"asked for {asked}, it answered with a version of "
                f"{version.project}/{version.model}"
            )
        if asked.version.isdigit() and version.number != int(asked.version):
            raise invalid_reply(f"asked for {asked}, it answered with version {version.number}")
    return version


def version_from_reply(data: Any, asked: ModelRef | None = None) -> Version:
    """The checked `Version` of a server's JSON reply (see `checked_version`); a reply that
    lacks a field or has one of the wrong kind raises `ProtocolError` too."""
    if not isinstance(data, dict):
        raise invalid_reply(f"a version is a JSON object, not {type(data).__name__}")
    try:
        files = data["files"]
        if not isinstance(files, list) or not all(isinstance(f, dict) for f in files):
            raise TypeError("files")
        version = Version.from_json(data)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise invalid_reply(f"the version lacks or garbles the field {exc}") from None
    return checked_version(version, asked)


# --- helpers ------------------------------------------------------------------------------------


def _name(value: object, what: str, longest: int) -> str:
    if not isinstance(value, str) or len(value) > longest or not _NAME.fullmatch(value):
        raise invalid_reply(
            f"the {what} name {value!r} is not a name (up to {longest} letters, digits, '.', "
            "'_' or '-', starting with a letter or digit)"
        )
    return value


def _path_problem(path: object) -> str | None:
    """The server's `lmvp_server.manifest.path_problem`, for a value that may not be a str."""
    if not isinstance(path, str):
        return "is not text"
    if not path:
        return "is empty"
    if len(path.encode("utf-8", "surrogatepass")) > MAX_PATH_BYTES:
        return f"is longer than {MAX_PATH_BYTES} bytes"
    if "\x00" in path:
        return "contains a NUL byte"
    if any(unicodedata.category(ch) in ("Cc", "Cf", "Cs") for ch in path):
        return "contains a control character"
    if "\\" in path:
        return "contains a backslash"
    if path.startswith("/"):
        return "is absolute"
    if len(path) >= 2 and path[1] == ":" and path[0].isalpha():
        return "starts with a drive letter"
    parts = path.split("/")
    if any(part == ".." for part in parts):
        return "contains a '..' segment"
    if any(part in ("", ".") for part in parts):
        return "contains an empty or '.' segment"
    return None
