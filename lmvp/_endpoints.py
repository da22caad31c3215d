"""The server's JSON calls that the client's workflows share, as plain functions over one
`HTTP` session: models, versions and their commit, aliases, finishing a run, a metrics batch.

The layers of `lmvp`; a module imports only from its own row or the rows below it:

    lmvp (package), api, cli           the module functions and the `lmvp` command
    client                             `Client`: the façade, one method per thing a user does
    fetch, publish, runs               download a version, publish one, log a run
    cache, chunked, transfer, tus,     blobs down and up (whole or as chunks), the JSON calls
    _endpoints                         they share
    wire, _http, credentials           raw connections, the session and its one retry engine
    errors, types, refs, validate, throttle, local_upload, hashmemo, history, ...
                                       records, rules and helpers

`Client` delegates these calls here, and `fetch`, `publish` and `runs` call them directly, so
that none of them needs `Client` (tests/test_packaging.py checks the graph has no cycle).
"""

from __future__ import annotations

import socket
import uuid
from collections.abc import Iterable
from typing import Any

from lmvp._http import HTTP
from lmvp.errors import Conflict, NotFound
from lmvp.refs import ModelRef
from lmvp.types import Alias, FileEntry, Model, RunInfo, Version
from lmvp.validate import version_from_reply

__all__ = [
    "commit_version",
    "create_model",
    "ensure_model",
    "finish_run",
    "get_model",
    "get_version",
    "post_metrics",
    "set_alias",
]


def get_model(http: HTTP, ref: ModelRef) -> Model:
    """The model `ref` names. Raises `NotFound`."""
    return Model.from_json(http.json("GET", f"/projects/{ref.project}/models/{ref.model}"))


def create_model(http: HTTP, ref: ModelRef, *, description: str = "") -> Model:
    """Create the model `ref` names. Raises `Conflict` if it exists."""
    data = http.json(
        "POST",
        f"/projects/{ref.project}/models",
        json={"name": ref.model, "description": description},
    )
    return Model.from_json(data)


def ensure_model(http: HTTP, ref: ModelRef) -> Model:
    """The model, created first if it does not exist yet."""
    try:
        return get_model(http, ref)
    except NotFound:
        try:
            return create_model(http, ref)
        except Conflict:  # created by someone else a moment ago
            return get_model(http, ref)


def get_version(http: HTTP, ref: ModelRef) -> Version:
    """The version `ref` names, checked (`lmvp.validate`) before anything uses it."""
    path = f"/projects/{ref.project}/models/{ref.model}/versions/{ref.version}"
    # Checked here, at the door: its names and paths become folders and files on this disk.
    return version_from_reply(http.json("GET", path), ref)


def commit_version(
    http: HTTP,
    ref: ModelRef,
    files: Iterable[FileEntry],
    *,
    message: str = "",
    metadata: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
    parent: int | Version | None = None,
    idempotency_key: str | None = None,
    source_host: str | None = None,
    source_path: str = "",
    run: int | None = None,
    step: int | None = None,
) -> Version:
    """Commit the model's next version; see `Client.commit_version`."""
    body: dict[str, Any] = {
        "files": [{"path": f.path, "size": f.size, "sha256": f.sha256} for f in files],
        "message": message,
        "metadata": metadata or {},
        "metrics": metrics or {},
        "idempotency_key": idempotency_key or uuid.uuid4().hex,
        "source": {
            "host": socket.gethostname() if source_host is None else source_host,
            "path": source_path,
        },
    }
    if run is not None:
        body["run"] = run
    if step is not None:
        body["step"] = step
    if parent is not None:
        body["parent"] = parent.number if isinstance(parent, Version) else int(parent)
    # Idempotent through its key: retried like a GET.
    data = http.json(
        "POST",
        f"/projects/{ref.project}/models/{ref.model}/versions",
        json=body,
        idempotent=True,
    )
    return Version.from_json(data)


def set_alias(http: HTTP, ref: ModelRef, alias: str, number: int) -> Alias:
    """Point `alias` at version `number` of the model (maintainers)."""
    data = http.json(
        "PUT",
        f"/projects/{ref.project}/models/{ref.model}/aliases/{alias}",
        json={"version": number},
    )
    return Alias.from_json(data)


def finish_run(http: HTTP, run_id: int, status: str) -> RunInfo:
    """Mark a run `finished` or `failed` (or `running` again) and return it."""
    return RunInfo.from_json(http.json("PATCH", f"/runs/{int(run_id)}", json={"status": status}))


def post_metrics(http: HTTP, run_id: int, body: bytes) -> int:
    """Send one encoded batch of metric points (`lmvp.runs.encode_batch`); returns how many
    were new. Idempotent per key and step, so it is retried like a GET."""
    data = http.json(
        "POST",
        f"/runs/{run_id}/metrics",
        content=body,
        headers={"Content-Type": "application/json"},
        idempotent=True,
    )
    return int(data["inserted"])
