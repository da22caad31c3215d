"""The module-level API: `lmvp.download`, `lmvp.update`, `lmvp.show_history`.

They use a default `Client`, made on first use from `LMVP_SERVER` / `LMVP_TOKEN` or the saved
login, and made again if those variables change.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from lmvp.client import Client
from lmvp.refs import ModelRef
from lmvp.types import Version

_lock = threading.Lock()
_default: tuple[tuple[str | None, str | None], Client] | None = None


def default_client() -> Client:
    """The client the module functions use."""
    global _default
    key = (os.environ.get("LMVP_SERVER"), os.environ.get("LMVP_TOKEN"))
    with _lock:
        if _default is None or _default[0] != key:
            if _default is not None:
                _default[1].close()
            _default = (key, Client())
        return _default[1]


def download(
    ref: str | ModelRef,
    *,
    cache_dir: str | Path | None = None,
    local_dir: str | Path | None = None,
    force: bool = False,
    offline: bool = False,
) -> Path:
    """Fetch a version and return where it is on this machine.

    `ref` is `"project/model"` (the latest version), `"project/model:7"` (or `:v7`), or
    `"project/model@production"` (an alias). Returns the file when the version holds one
    file, else the version's folder. Files come from a verified, content-addressed cache, so
    fetching the same bytes again moves nothing over the network; an interrupted download
    resumes where it stopped, also in a later process. `local_dir` also places the files in a
    folder of your own; `force` fetches the bytes again; `offline` serves only from the cache.

    Raises `NotFound`, `AuthenticationError`, `PermissionDenied`, `ServerUnavailable`,
    `IntegrityError` (bytes that do not match their sha256), or `NotCached` when offline.
    """
    return default_client().download(
        ref, cache_dir=cache_dir, local_dir=local_dir, force=force, offline=offline
    )


def update(
    model_ref: str | ModelRef,
    local_model: Any,
    *,
    message: str | None = None,
    metadata: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
    aliases: Sequence[str] = (),
    parent: int | Version | None = None,
) -> Version:
    """Publish `local_model` as the next version of `model_ref` and return that version.

    `local_model` is a file, a folder (a multi-file checkpoint), a dict of NumPy arrays, or a
    PyTorch module or state dict (saved as safetensors). Only bytes the project does not hold
    yet are uploaded, resumably; a model that does not exist yet is created. `aliases` are set
    on the new version (maintainers); `parent` makes the commit fail with `Conflict` if
    another version landed after it.
    """
    return default_client().update(
        model_ref,
        local_model,
        message=message,
        metadata=metadata,
        metrics=metrics,
        aliases=aliases,
        parent=parent,
    )


def show_history(
    project_or_model: str, *, limit: int = 20, file: IO[str] | None = None
) -> list[Version]:
    """Print the versions of a model (`"vision/resnet"`) or of a whole project (`"vision"`),
    newest first, and return them."""
    return default_client().show_history(project_or_model, limit=limit, file=file)


# The name the original README promised.
showHistory = show_history
