"""`update`: turn a local model (a file, a folder, or weights in memory) into a new version.

Small files are hashed and the project is asked which bytes it lacks; only those are uploaded
(tus, resumable, several at once). A large file whose hash is not remembered from an earlier
publish is sent while it is hashed, since hashing first would cost as long again: the upload
stops as soon as the hash shows the project already holds the bytes. Then the manifest is
committed with an idempotency key so that a retried commit can never make two versions.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from lmvp import _endpoints
from lmvp._http import HTTP
from lmvp.cache import default_cache_root
from lmvp.chunked import NotChunked, chunks_wanted, send_chunked
from lmvp.errors import LMVPError, PermissionDenied
from lmvp.hashmemo import HashMemo
from lmvp.refs import ModelRef, parse_ref
from lmvp.transfer import (
    check_unchanged,
    hash_file,
    missing_blobs,
    serialised,
    upload_files,
    upload_unhashed,
    wants_hash_first,
)
from lmvp.types import FileEntry, LocalFile, Progress, Version

SAFETENSORS_NAME = "model.safetensors"
# Files at least this big are uploaded while they are hashed (when their hash is not
# remembered); smaller ones are hashed first, which lets the project skip bytes it holds. A
# server whose blobs are in an object store asks for every file to be hashed first (see
# `wants_hash_first`).
SEND_WHILE_HASHING = 64 * 1024 * 1024


def publish(
    http: HTTP,
    ref: ModelRef,
    local_model: Any,
    *,
    message: str | None,
    metadata: dict[str, Any] | None,
    metrics: dict[str, Any] | None,
    aliases: Sequence[str],
    parent: int | Version | None,
    idempotency_key: str | None,
    progress: Progress | None,
    run: int | None = None,
    step: int | None = None,
) -> Version:
    with tempfile.TemporaryDirectory(prefix="lmvp-update-") as tmp:
        files, extra_meta = collect_files(local_model, Path(tmp))
        _endpoints.ensure_model(http, ref)
        files = send_files(http, ref.project, files, progress)
        version = _endpoints.commit_version(
            http,
            ref,
            [FileEntry(f.relpath, f.size, f.sha256) for f in files],
            message=message or "",
            metadata={**extra_meta, **(metadata or {})},
            metrics=metrics,
            parent=parent,
            idempotency_key=idempotency_key,
            source_path=_source_path(local_model),
            run=run,
            step=step,
        )
    for alias in aliases:
        try:
            _endpoints.set_alias(http, ref, alias, version.number)
        except PermissionDenied as exc:
            raise PermissionDenied(
                f"version {version.ref} was published, but setting alias {alias!r} needs the "
                f"maintainer role: {exc.message}",
                code=exc.code,
                status=exc.status,
            ) from exc
    return _endpoints.get_version(http, parse_ref(version.ref)) if aliases else version


def collect_files(local_model: Any, tmp: Path) -> tuple[list[LocalFile], dict[str, Any]]:
    """The files that make up `local_model`, with metadata describing its form."""
    if isinstance(local_model, str | os.PathLike):
        path = Path(local_model).expanduser()
        if path.is_file():
            return [LocalFile(path.name, path, path.stat().st_size)], {}
        if path.is_dir():
            files = [
                LocalFile(p.relative_to(path).as_posix(), p, p.stat().st_size)
                for p in sorted(path.rglob("*"))
                if p.is_file() and not _is_temporary(p.relative_to(path))
            ]
            if not files:
                raise LMVPError(f"{path} holds no files to publish")
            return files, {}
        raise LMVPError(f"{path} does not exist: give a file, a folder, or weights in memory")
    target = tmp / SAFETENSORS_NAME
    framework = save_safetensors(local_model, target)
    return [LocalFile(SAFETENSORS_NAME, target, target.stat().st_size)], {
        "framework": framework,
        "format": "safetensors",
    }


def save_safetensors(obj: Any, target: Path) -> str:
    """Save weights held in memory as safetensors; returns the framework name.

    Takes a dict of NumPy arrays, a PyTorch state dict or `nn.Module`. torch is imported only
    when given a torch object, so NumPy users need not install it.
    """
    module = type(obj).__module__
    if module.startswith("torch") or _looks_like_torch(obj):
        import torch
        from safetensors.torch import save_file as save_torch

        state = obj.state_dict() if isinstance(obj, torch.nn.Module) else obj
        tensors = {k: v.detach().contiguous().cpu() for k, v in state.items()}
        save_torch(tensors, str(target))
        return "torch"
    if isinstance(obj, dict) and obj:
        import numpy as np
        from safetensors.numpy import save_file as save_numpy

        if all(isinstance(v, np.ndarray) for v in obj.values()):
            save_numpy({str(k): np.ascontiguousarray(v) for k, v in obj.items()}, str(target))
            return "numpy"
    raise LMVPError(
        f"cannot publish a {type(obj).__name__}: give a file or folder path, a dict of NumPy "
        "arrays, or a PyTorch module or state dict"
    )


def send_files(
    http: HTTP,
    project: str,
    files: list[LocalFile],
    progress: Progress | None,
    *,
    state_dir: Path | None = None,
) -> list[LocalFile]:
    """Make sure the project holds the bytes of every file; returns them with their sha256.

    A file whose sha256 is given is taken at its word (the server checks the bytes it gets
    against it). Other hashes are taken from the memo when a file is unchanged since it was
    last hashed; small unknown files are hashed first (several at once: hashlib releases the
    GIL); large unknown ones are sent without hashing first (see `upload_unhashed`), unless the
    server asks for hashes first (`wants_hash_first`). Every hash
    computed here is remembered. Upload state files go to `state_dir` (default: the user state
    dir). Raises `IntegrityError` when a file changes while it is read, and what the uploads
    raise.
    """
    memo = HashMemo(default_cache_root() / "hashes.sqlite3")
    try:
        stats = [f.path.stat() for f in files]
        known = [f.sha256 or memo.lookup(f.path, st) for f, st in zip(files, stats, strict=True)]
        to_hash = [i for i, f in enumerate(files) if not known[i] and f.size < SEND_WHILE_HASHING]
        send_unhashed = [
            i for i, f in enumerate(files) if not known[i] and f.size >= SEND_WHILE_HASHING
        ]
        if send_unhashed and wants_hash_first(http, project):
            to_hash, send_unhashed = to_hash + send_unhashed, []
        # Big files to a server elsewhere, on a link not known to be fast, go as chunks
        # (lmvp.chunked), which hashes them anyway.
        as_chunks = [chunks_wanted(http, f.size, "up") for f in files]
        by_chunks = [i for i in range(len(files)) if not known[i] and as_chunks[i]]
        to_hash = [i for i in to_hash if i not in by_chunks]
        send_unhashed = [i for i in send_unhashed if i not in by_chunks]
        started = time.time_ns()
        with ThreadPoolExecutor(max_workers=min(4, max(1, len(to_hash)))) as pool:
            digests = pool.map(lambda i: hash_file(files[i].path), to_hash)
            for i, digest in zip(to_hash, digests, strict=True):
                known[i] = digest
                check_unchanged(files[i].path, stats[i], while_="hashed")
                memo.remember(files[i].path, stats[i], digest, started)
        hashed = {i: d for i, d in enumerate(known) if d}
        lacking = missing_blobs(http, project, hashed.values())
        send_hashed: dict[str, int] = {}
        for i, digest in hashed.items():
            if digest in lacking:
                send_hashed.setdefault(digest, i)
        for digest, i in list(send_hashed.items()):
            if as_chunks[i]:
                by_chunks.append(send_hashed.pop(digest))
        set_total = getattr(progress, "set_total", None)
        if set_total is not None:
            set_total(
                sum(files[i].size for i in [*send_hashed.values(), *send_unhashed, *by_chunks])
            )

        def unhashed(i: int) -> None:
            started = time.time_ns()
            digest = upload_unhashed(
                http,
                project,
                files[i].path,
                size=files[i].size,
                progress=report,
                state_dir=state_dir,
            )
            known[i] = digest
            memo.remember(files[i].path, stats[i], digest, started)

        def chunks(i: int) -> None:
            started = time.time_ns()
            try:
                sent = send_chunked(
                    http, project, files[i].path, sha256=known[i] or None, progress=report
                )
            except NotChunked:  # a server without the chunk protocol: send the file whole
                if not known[i]:
                    return unhashed(i)
                whole = [(files[i].path, known[i] or "", files[i].size)]
                return upload_files(http, project, whole, progress=report, state_dir=state_dir)
            known[i] = sent.sha256
            memo.remember(files[i].path, stats[i], sent.sha256, started)

        report = serialised(progress)
        with ThreadPoolExecutor(max_workers=4, thread_name_prefix="lmvp-send") as pool:
            jobs = [pool.submit(unhashed, i) for i in send_unhashed]
            jobs += [pool.submit(chunks, i) for i in by_chunks]
            jobs.append(
                pool.submit(
                    upload_files,
                    http,
                    project,
                    [(files[i].path, d, files[i].size) for d, i in send_hashed.items()],
                    progress=report,
                    state_dir=state_dir,
                )
            )
        for job in jobs:
            job.result()
    finally:
        memo.close()
    return [
        LocalFile(f.relpath, f.path, f.size, d or "") for f, d in zip(files, known, strict=True)
    ]


def _looks_like_torch(obj: Any) -> bool:
    if isinstance(obj, dict) and obj:
        first = next(iter(obj.values()))
        return type(first).__module__.startswith("torch")
    return False


def _is_temporary(rel: Path) -> bool:
    """Editor and writer leftovers that are not part of a checkpoint."""
    name = rel.name
    return any(part.startswith(".") for part in rel.parts) or name.endswith(
        (".tmp", ".part", ".incomplete", "~")
    )


def _source_path(local_model: Any) -> str:
    if isinstance(local_model, str | os.PathLike):
        return str(Path(local_model).expanduser().resolve())
    return ""
