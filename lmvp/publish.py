"""`update`: turn a local model (a file, a folder, or weights in memory) into a new version.

Files are hashed, the project is asked which bytes it lacks, only those are uploaded (tus,
resumable, several at once), then the manifest is committed with an idempotency key so that a
retried commit can never make two versions.
"""

from __future__ import annotations

import os
import socket
import tempfile
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lmvp.errors import LMVPError, PermissionDenied
from lmvp.refs import ModelRef
from lmvp.transfer import hash_file, missing_blobs, upload_files
from lmvp.types import Version

if TYPE_CHECKING:
    from lmvp.client import Client, Progress

SAFETENSORS_NAME = "model.safetensors"


@dataclass(frozen=True)
class LocalFile:
    relpath: str
    path: Path
    size: int
    sha256: str = ""


def publish(
    client: Client,
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
) -> Version:
    with tempfile.TemporaryDirectory(prefix="lmvp-update-") as tmp:
        files, extra_meta = collect_files(local_model, Path(tmp))
        files = hash_files(files)
        client.ensure_model(ref)
        lacking = missing_blobs(client.http, ref.project, [f.sha256 for f in files])
        to_send = {f.sha256: f for f in files if f.sha256 in lacking}
        upload_files(
            client.http,
            ref.project,
            [(f.path, f.sha256, f.size) for f in to_send.values()],
            progress=progress,
        )
        body: dict[str, Any] = {
            "files": [{"path": f.relpath, "size": f.size, "sha256": f.sha256} for f in files],
            "message": message or "",
            "metadata": {**extra_meta, **(metadata or {})},
            "metrics": metrics or {},
            "idempotency_key": idempotency_key or uuid.uuid4().hex,
            "source": {"host": socket.gethostname(), "path": _source_path(local_model)},
        }
        if parent is not None:
            body["parent"] = parent.number if isinstance(parent, Version) else int(parent)
        data = client.http.json(
            "POST",
            f"/projects/{ref.project}/models/{ref.model}/versions",
            json=body,
            idempotent=True,
        )
    version = Version.from_json(data)
    for alias in aliases:
        try:
            client.set_alias(ref, alias, version)
        except PermissionDenied as exc:
            raise PermissionDenied(
                f"version {version.ref} was published, but setting alias {alias!r} needs the "
                f"maintainer role: {exc.message}",
                code=exc.code,
                status=exc.status,
            ) from exc
    return client.version(version.ref) if aliases else version


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


def hash_files(files: list[LocalFile]) -> list[LocalFile]:
    """Hash files two at a time (hashlib releases the GIL)."""
    with ThreadPoolExecutor(max_workers=min(4, max(1, len(files)))) as pool:
        digests = list(pool.map(lambda f: hash_file(f.path), files))
    return [LocalFile(f.relpath, f.path, f.size, d) for f, d in zip(files, digests, strict=True)]


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
