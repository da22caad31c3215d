"""Recognising checkpoints in a watched folder.

This module owns one question: given a folder a training job writes to, what
are its checkpoints, and has one of them changed? A checkpoint is either a
model file (`model.safetensors`, `epoch=3-step=1000.ckpt`, ...) or a checkpoint
directory whose files together are one checkpoint (the Hugging Face Trainer's
`checkpoint-500/`). Each checkpoint is named by its *key*: its path relative
to the watched folder, with `/` separators.

It is pure logic over the file system: no watchdog, no Qt, no server. The
watcher maps each event to a key with `WatchRules.checkpoint_key`, the
rescan at start uses `scan`, and the uploader compares `fingerprint`s before
and after hashing and sends `files_of`.

Symbolic links are never followed (except the watched folder itself): a link
may point out of the folder, and one pointing inside would only count the
same checkpoint twice.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import os
import re
import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import NamedTuple

import pathspec

from lmvp_daemon.errors import DaemonError

log = logging.getLogger(__name__)

DEFAULT_INCLUDE: tuple[str, ...] = (
    "*.safetensors",
    "*.pt",
    "*.pth",
    "*.bin",
    "*.ckpt",
    "*.onnx",
    "*.h5",
    "*.keras",
    "*.gguf",
    "*.pkl",
    "*.joblib",
    # Directory patterns (trailing slash): every file below is one checkpoint.
    "checkpoint-[0-9]*/",  # Hugging Face Trainer
    "*.ckpt/",  # Lightning with DeepSpeed saves `epoch=3-step=1000.ckpt` as a directory
)
"""Include patterns of a new watch. A pattern ending in `/` names checkpoint directories."""

TEMPORARY_SUFFIXES: tuple[str, ...] = (".tmp", ".part", ".incomplete", ".swp", "~")
"""Name endings of files still being written; they become checkpoints only once renamed."""

# transformers (4.36 to 4.38) staged `tmp-checkpoint-N/` and renamed it when complete.
_STAGING_PREFIX = "tmp-"


class WatchRootError(DaemonError):
    """The watched folder cannot be read as a whole; nothing in it may be taken as deleted."""

    title = "Watched folder unavailable"


class WatchRootMissing(WatchRootError):
    """The watched folder does not exist (any more), or is not a directory."""

    title = "Watched folder missing"


class WatchRootUnreadable(WatchRootError):
    """The watched folder exists but may not be listed."""

    title = "Watched folder unreadable"


class CheckpointVanished(DaemonError):
    """A checkpoint disappeared (or was replaced by a link) before its files could be listed."""

    title = "Checkpoint vanished"


class FileStat(NamedTuple):
    """One file of a checkpoint as the file system describes it."""

    path: str
    """Relative to the checkpoint directory, or the file's name for a single-file checkpoint."""
    size: int
    mtime_ns: int
    inode: int


@dataclass(frozen=True)
class Fingerprint:
    """What a checkpoint looks like on disk: its files' paths, sizes, mtimes and inodes.

    Two fingerprints are equal when nothing was written, grown, truncated,
    touched, added, removed or replaced (a new inode) in between; an unchanged
    fingerprint across hashing is what proves a checkpoint was finished.
    """

    files: tuple[FileStat, ...]
    """Sorted by path."""

    @property
    def size(self) -> int:
        """Total size of the checkpoint's files in bytes."""
        return sum(f.size for f in self.files)

    def to_json(self) -> str:
        """Serialise for storage (the outbox keeps the fingerprint it hashed)."""
        return json.dumps([list(f) for f in self.files], separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> Fingerprint:
        """Read back what `to_json` wrote."""
        return cls(
            tuple(FileStat(str(p), int(s), int(m), int(i)) for p, s, m, i in json.loads(text))
        )


class WatchRules:
    """Which paths of a watched folder are checkpoints: include and gitignore-style ignore patterns.

    Include patterns ending in `/` name checkpoint directories, the others
    model files. A pattern without a slash matches a name at any depth
    (`*.pt`); one with a slash matches the path relative to the watched
    folder, gitignore style (`runs/*/best.pt`). Ignore patterns follow
    `.gitignore` rules (`*.bin`, `runs/**`, `/scratch/`, `optimizer.pt`) and
    also drop files inside checkpoint directories. Temporary names are never
    checkpoints, whatever the patterns say.
    """

    def __init__(
        self, include: Sequence[str] = DEFAULT_INCLUDE, ignore: Sequence[str] = ()
    ) -> None:
        if isinstance(include, str) or isinstance(ignore, str):
            raise TypeError("include and ignore are sequences of patterns, not one string")
        self.include: tuple[str, ...] = tuple(p for p in include if p.strip())
        self.ignore: tuple[str, ...] = tuple(p for p in ignore if p.strip())
        file_patterns = [p for p in self.include if not p.endswith("/")]
        dir_patterns = [p.rstrip("/") for p in self.include if p.endswith("/")]
        self._file_name = _compile_names(p for p in file_patterns if "/" not in p)
        self._file_path = _compile_paths(p for p in file_patterns if "/" in p)
        self._dir_name = _compile_names(p for p in dir_patterns if "/" not in p)
        self._dir_path = _compile_paths(p + "/" for p in dir_patterns if "/" in p)
        self._ignore = pathspec.GitIgnoreSpec.from_lines(self.ignore) if self.ignore else None

    def __repr__(self) -> str:
        return f"WatchRules(include={list(self.include)!r}, ignore={list(self.ignore)!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, WatchRules):
            return NotImplemented
        return (self.include, self.ignore) == (other.include, other.ignore)

    def __hash__(self) -> int:
        return hash((self.include, self.ignore))

    def checkpoint_key(self, relpath: str | PurePath) -> str | None:
        """The key of the checkpoint that a changed path belongs to, or None.

        For a model file that is the file's own relative path; for any path in
        or below a checkpoint directory, the directory's relative path (the
        outermost one if they nest). The path itself may be a checkpoint
        directory (a directory renamed into place). None if the path is not
        part of a checkpoint, is temporary, or is ignored. Raises ValueError
        for a path that leaves the watched folder.
        """
        parts = _split(relpath)
        if not parts or any(self._is_temporary_part(p) for p in parts):
            return None
        for i in range(len(parts)):
            head = parts[: i + 1]
            last = i == len(parts) - 1
            if not last and self._ignore is not None and self._ignore.match_file(_join(head) + "/"):
                return None
            if self._is_checkpoint_dir(head):
                if self._ignored_parts(parts, is_dir=last):
                    return None
                return _join(head)
        if self._is_model_file(parts) and not self._ignored_parts(parts, is_dir=False):
            return _join(parts)
        return None

    # -- helpers ------------------------------------------------------------

    def _is_temporary_part(self, name: str) -> bool:
        if _is_temporary_name(name):
            return True
        staged = name[len(_STAGING_PREFIX) :] if name.startswith(_STAGING_PREFIX) else ""
        return bool(staged) and self._dir_name is not None and bool(self._dir_name.match(staged))

    def _is_checkpoint_dir(self, parts: Sequence[str]) -> bool:
        if self._dir_name is not None and self._dir_name.match(parts[-1]):
            return True
        return self._dir_path is not None and self._dir_path.match_file(_join(parts) + "/")

    def _is_model_file(self, parts: Sequence[str]) -> bool:
        if self._file_name is not None and self._file_name.match(parts[-1]):
            return True
        return self._file_path is not None and self._file_path.match_file(_join(parts))

    def _ignored_parts(self, parts: Sequence[str], *, is_dir: bool) -> bool:
        if self._ignore is None or not parts:
            return False
        # As in git, nothing below an ignored directory can be taken back in.
        for i in range(1, len(parts)):
            if self._ignore.match_file(_join(parts[:i]) + "/"):
                return True
        return self._ignore.match_file(_join(parts) + ("/" if is_dir else ""))


_STEP_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (field, re.compile(rf"(?<![a-z]){word}[-_=.]?(\d+)(?!\d)", re.IGNORECASE))
    for field, word in (
        ("epoch", r"epoch"),
        ("step", r"(?:global_?)?step"),
        ("step", r"iter(?:ation)?"),
        ("step", r"checkpoint"),
        ("step", r"ckpt"),
    )
)


def step_from_name(name: str | PurePath) -> dict[str, int]:
    """Read the training step and epoch from a checkpoint's name, where frameworks put them.

    `checkpoint-500` gives {"step": 500}; `epoch=3-step=1000.ckpt` gives
    {"epoch": 3, "step": 1000}; `model_step_2000.pt`, `global_step2000`,
    `iter_0002000`, `ckpt-300` give a step and `epoch_5.pt` an epoch. Only the
    last path component is read. Returns {} when the name holds neither
    (`last.ckpt`, `model-00001-of-00002.safetensors`).
    """
    text = PurePath(name).name if isinstance(name, PurePath) else name.rsplit("/", 1)[-1]
    found: dict[str, int] = {}
    for field, pattern in _STEP_PATTERNS:
        if field in found:
            continue
        match = pattern.search(text)
        if match is not None:
            found[field] = int(match.group(1))
    return {k: found[k] for k in ("epoch", "step") if k in found}


def fingerprint(root: Path, key: str, *, rules: WatchRules | None = None) -> Fingerprint | None:
    """Describe a checkpoint's files as they are now; None if it vanished.

    `key` is a file or a checkpoint directory relative to `root`. Temporary
    files inside a directory are left out, and so are ignored ones when the
    watch's `rules` are given (pass them, so that a fingerprint compares equal
    to the one `scan` returned). A checkpoint reached through a symbolic link
    counts as vanished. A directory with no files gives an empty fingerprint.
    Raises ValueError for a key that leaves `root`.
    """
    try:
        found = _lstat_inside(root, key)
        if found is None:
            return None
        path, st = found
        if stat.S_ISREG(st.st_mode):
            return Fingerprint((_file_stat(path.name, st),))
        if stat.S_ISDIR(st.st_mode):
            return _fingerprint_dir(path, key, rules)
    except FileNotFoundError:
        return None
    return None


def files_of(root: Path, key: str, *, rules: WatchRules | None = None) -> list[tuple[str, Path]]:
    """The files to upload for a checkpoint: (path inside the checkpoint, absolute path) pairs.

    A single file gives [(its name, its path)]; a checkpoint directory gives
    each of its files relative to the directory, sorted, with the same files
    left out as by `fingerprint`. Raises CheckpointVanished if the checkpoint
    is gone or replaced by a link, ValueError for a key that leaves `root`.
    """
    vanished = CheckpointVanished(f"{key} in {root} disappeared before it could be read")
    try:
        found = _lstat_inside(root, key)
        if found is None:
            raise vanished
        path, st = found
        if stat.S_ISREG(st.st_mode):
            return [(path.name, path)]
        if stat.S_ISDIR(st.st_mode):
            return [(rel, path / rel) for rel, _ in _walk_files(path, key, rules)]
    except FileNotFoundError:
        raise vanished from None
    raise vanished


def scan(root: Path, rules: WatchRules) -> dict[str, Fingerprint]:
    """Find every checkpoint in a watched folder: key -> fingerprint.

    Walks `root` with os.scandir, following no symbolic link, skipping
    temporary and ignored paths and not descending into checkpoint
    directories (each is one checkpoint). Directories with no files yet and
    subfolders that vanish or may not be read during the walk are left out
    (the latter logged). Raises WatchRootMissing if `root` is not an existing
    directory, before or after the walk, and WatchRootUnreadable if it may not
    be listed: a missing folder must never look like every checkpoint deleted.
    """
    root = Path(root)
    before = _root_identity(root)
    found: dict[str, Fingerprint] = {}
    stack: list[tuple[str, str]] = [(os.fspath(root), "")]
    while stack:
        directory, prefix = stack.pop()
        try:
            entries = list(os.scandir(directory))
        except FileNotFoundError:
            if not prefix:
                raise _missing(root) from None
            continue
        except (PermissionError, NotADirectoryError) as exc:
            if not prefix:
                raise _unreadable(root, exc) from exc
            log.warning("skipping %s in watched folder %s: %s", prefix, root, exc)
            continue
        for entry in entries:
            name = entry.name
            if _is_temporary_name(name):
                continue
            rel = prefix + name
            try:
                if entry.is_symlink():
                    continue
                if entry.is_dir(follow_symlinks=False):
                    if rules._is_temporary_part(name):
                        continue
                    if rules._ignore is not None and rules._ignore.match_file(rel + "/"):
                        continue
                    if rules._is_checkpoint_dir(rel.split("/")):
                        dir_print = _fingerprint_dir(Path(entry.path), rel, rules)
                        if dir_print is not None and dir_print.files:
                            found[rel] = dir_print
                    else:
                        stack.append((entry.path, rel + "/"))
                elif entry.is_file(follow_symlinks=False):
                    parts = rel.split("/")
                    if not rules._is_model_file(parts):
                        continue
                    if rules._ignore is not None and rules._ignore.match_file(rel):
                        continue
                    found[rel] = Fingerprint((_file_stat(name, entry.stat(follow_symlinks=False)),))
            except FileNotFoundError:
                continue  # removed while we looked: a real deletion, seen as one
    if _root_identity(root) != before:
        # Unmounted, removed or replaced during the walk: what we saw is not the folder.
        raise _missing(root)
    return found


# -- helpers ----------------------------------------------------------------


def _compile_names(patterns: Iterable[str]) -> re.Pattern[str] | None:
    regexes = [fnmatch.translate(p) for p in patterns]
    return re.compile("|".join(regexes)) if regexes else None


def _compile_paths(patterns: Iterable[str]) -> pathspec.GitIgnoreSpec | None:
    lines = list(patterns)
    return pathspec.GitIgnoreSpec.from_lines(lines) if lines else None


def _is_temporary_name(name: str) -> bool:
    return name.startswith(".") or name.lower().endswith(TEMPORARY_SUFFIXES)


def _split(relpath: str | PurePath) -> list[str]:
    text = os.fspath(relpath).replace(os.sep, "/")
    if text.startswith("/") or PurePath(text).is_absolute():
        raise ValueError(f"expected a path relative to the watched folder, got {text!r}")
    parts = [p for p in text.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise ValueError(f"path {text!r} leaves the watched folder")
    return parts


def _join(parts: Sequence[str]) -> str:
    return "/".join(parts)


def _file_stat(path: str, st: os.stat_result) -> FileStat:
    return FileStat(path, st.st_size, st.st_mtime_ns, st.st_ino)


def _lstat_inside(root: Path, key: str) -> tuple[Path, os.stat_result] | None:
    """The path of `key` and its lstat, or None if any component is a link or missing."""
    parts = _split(key)
    if not parts:
        raise ValueError("a checkpoint key names a file or directory inside the watched folder")
    path = Path(root)
    st: os.stat_result | None = None
    for part in parts:
        path = path / part
        try:
            st = path.lstat()
        except (FileNotFoundError, NotADirectoryError):
            return None
        if stat.S_ISLNK(st.st_mode):
            return None
    assert st is not None
    return path, st


def _walk_files(
    directory: Path, key: str, rules: WatchRules | None
) -> list[tuple[str, os.stat_result]]:
    """Every regular file below a checkpoint directory, relative to it, sorted."""
    ignore = rules._ignore if rules is not None else None
    files: list[tuple[str, os.stat_result]] = []
    stack: list[tuple[str, str]] = [(os.fspath(directory), "")]
    while stack:
        current, prefix = stack.pop()
        try:
            entries = list(os.scandir(current))
        except FileNotFoundError:
            if not prefix:
                raise
            continue
        for entry in entries:
            if _is_temporary_name(entry.name):
                continue
            rel = prefix + entry.name
            try:
                if entry.is_symlink():
                    continue
                if entry.is_dir(follow_symlinks=False):
                    if ignore is None or not ignore.match_file(f"{key}/{rel}/"):
                        stack.append((entry.path, rel + "/"))
                elif entry.is_file(follow_symlinks=False) and (
                    ignore is None or not ignore.match_file(f"{key}/{rel}")
                ):
                    files.append((rel, entry.stat(follow_symlinks=False)))
            except FileNotFoundError:
                continue
    files.sort(key=lambda item: item[0])
    return files


def _fingerprint_dir(directory: Path, key: str, rules: WatchRules | None) -> Fingerprint | None:
    try:
        return Fingerprint(
            tuple(_file_stat(rel, st) for rel, st in _walk_files(directory, key, rules))
        )
    except FileNotFoundError:
        return None


def _root_identity(root: Path) -> tuple[int, int]:
    try:
        st = root.stat()
    except FileNotFoundError:
        raise _missing(root) from None
    except PermissionError as exc:
        raise _unreadable(root, exc) from exc
    if not stat.S_ISDIR(st.st_mode):
        raise WatchRootMissing(
            f"The watched folder {root} is not a folder. Point the watch at the folder "
            "the training job writes to (`lmvp-daemon watch rm`, then `watch add`)."
        )
    return st.st_dev, st.st_ino


def _missing(root: Path) -> WatchRootMissing:
    return WatchRootMissing(
        f"The watched folder {root} does not exist. If it was moved or its disk unmounted, "
        "restore it; nothing was deleted on the server. Otherwise remove the watch "
        "with `lmvp-daemon watch rm`."
    )


def _unreadable(root: Path, exc: OSError) -> WatchRootUnreadable:
    return WatchRootUnreadable(
        f"The watched folder {root} may not be read ({exc.strerror or exc}). "
        "Give the daemon's user read access to it."
    )
