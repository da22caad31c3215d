"""`download`: a version's files from the local cache, fetching only what the cache lacks.

A version's manifest is remembered in the cache beside its files, and so is what a moving
reference (`latest`, an alias) last pointed at, so that `offline=True` can answer from the
cache alone. The server's reply is checked (`lmvp.validate`) before any of it is written: its
names, number, paths and hashes become paths on this disk.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from lmvp import _endpoints, validate
from lmvp._http import HTTP
from lmvp.cache import Cache, default_cache_root
from lmvp.errors import NotCached
from lmvp.refs import ModelRef
from lmvp.types import Progress, Version


def download_version(
    http: HTTP,
    ref: ModelRef,
    *,
    cache_dir: str | Path | None,
    local_dir: str | Path | None,
    force: bool,
    offline: bool,
    progress: Progress | None,
) -> Path:
    """The version's files, fetched into the cache unless they are there; see
    `Client.download`."""
    cache = Cache(Path(cache_dir) if cache_dir else default_cache_root(), http.server)
    if offline:
        version = _remembered_version(cache, ref)
    else:
        version = validate.checked_version(_endpoints.get_version(http, ref), ref)
        cache.prepare()
        _remember_version(cache, ref, version)
    if not force:
        _recheck_changed_blobs(cache, version)
    missing = [f for f in _unique_blobs(version) if not cache.has_blob(f.sha256, f.size)]
    if offline and missing:
        raise NotCached(
            f"{ref} is not fully in the cache at {cache.dir} and offline=True: download it once "
            "while the server is reachable"
        )
    set_total = getattr(progress, "set_total", None)
    if set_total is not None:
        set_total(sum(f.size for f in missing))
    if offline:
        path = cache.snapshot(version, verify=force)
    else:
        path = cache.download_version(http, version, verify=force, progress=progress)
    _stamp_blobs(cache, version)
    if local_dir is not None:
        path = cache.materialize(version, Path(local_dir))
    if len(version.files) == 1:
        return path / version.files[0].path
    return path


def _recheck_changed_blobs(cache: Cache, version: Version) -> None:
    """Hash again every cached blob whose file changed since it was verified.

    Snapshot files are hard links to the blobs, so someone editing a downloaded checkpoint in
    place edits the cache. Comparing size, mtime and inode with what they were when the bytes
    were verified catches that at the cost of a stat; a damaged blob is removed and fetched
    again. `force=True` hashes every blob, changed or not.
    """
    for entry in _unique_blobs(version):
        stamp = _stamp_path(cache, entry.sha256)
        try:
            recorded = stamp.read_text()
        except OSError:
            continue
        try:
            now = _stat_key(cache.blob_path(entry.sha256))
        except FileNotFoundError:
            stamp.unlink(missing_ok=True)
            continue
        if now != recorded and not cache.verify_blob(entry.sha256):
            stamp.unlink(missing_ok=True)


def _stamp_blobs(cache: Cache, version: Version) -> None:
    for entry in _unique_blobs(version):
        stamp = _stamp_path(cache, entry.sha256)
        blob = cache.blob_path(entry.sha256)
        stamp.parent.mkdir(parents=True, exist_ok=True)
        _write_atomic(stamp, _stat_key(blob))


def _stamp_path(cache: Cache, sha256: str) -> Path:
    return cache.dir / "verified" / sha256


def _stat_key(path: Path) -> str:
    st = path.stat()
    return f"{st.st_size} {st.st_mtime_ns} {st.st_ino}"


def _unique_blobs(version: Version) -> list[Any]:
    seen: dict[str, Any] = {}
    for f in version.files:
        seen.setdefault(f.sha256, f)
    return list(seen.values())


def _manifest_path(cache: Cache, project: str, model: str, number: int) -> Path:
    return (
        cache.dir
        / "manifests"
        / validate.project_name(project)
        / validate.model_name(model)
        / f"{validate.version_number(number)}.json"
    )


def _ref_path(cache: Cache, ref: ModelRef) -> Path:
    return cache.dir / "refs" / ref.project / ref.model / ref.version


def _remember_version(cache: Cache, ref: ModelRef, version: Version) -> None:
    manifest = _manifest_path(cache, version.project, version.model, version.number)
    manifest.parent.mkdir(parents=True, exist_ok=True)
    _write_atomic(manifest, json.dumps(_version_json(version)))
    if not ref.version.isdigit():
        pointer = _ref_path(cache, ref)
        pointer.parent.mkdir(parents=True, exist_ok=True)
        _write_atomic(pointer, str(version.number))


def _remembered_version(cache: Cache, ref: ModelRef) -> Version:
    number = ref.version
    if not number.isdigit():
        try:
            number = _ref_path(cache, ref).read_text().strip()
        except OSError:
            raise NotCached(
                f"{ref} was never downloaded on this machine, so offline=True cannot resolve it"
            ) from None
    try:
        data = json.loads(_manifest_path(cache, ref.project, ref.model, int(number)).read_text())
    except (OSError, ValueError):
        raise NotCached(
            f"version {number} of {ref.name} is not in the cache at {cache.dir}; download it "
            "once while the server is reachable"
        ) from None
    return validate.version_from_reply(data, ref)


def _version_json(v: Version) -> dict[str, Any]:
    return {
        "project": v.project,
        "model": v.model,
        "number": v.number,
        "message": v.message,
        "metadata": v.metadata,
        "metrics": v.metrics,
        "author": v.author,
        "parent": v.parent,
        "aliases": list(v.aliases),
        "size": v.size,
        "files": [{"path": f.path, "size": f.size, "sha256": f.sha256} for f in v.files],
        "source": {"host": v.source_host, "path": v.source_path},
        "created_at": v.created_at.isoformat(),
    }


def _write_atomic(path: Path, text: str) -> None:
    """Replace `path` with `text` through a fresh private temporary file and a rename."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


__all__ = ["download_version"]
