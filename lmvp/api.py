"""The module-level API: `lmvp.download`, `lmvp.update`, `lmvp.show_history`, and runs:
`lmvp.init_run`, `lmvp.log_metrics`, `lmvp.get_metrics`.

They use a default `Client`, made on first use from `LMVP_SERVER` / `LMVP_TOKEN` or the saved
login, and made again if those variables change.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from lmvp import runs
from lmvp.client import Client
from lmvp.errors import LMVPError
from lmvp.refs import ModelRef, parse_ref
from lmvp.runs import Run
from lmvp.types import RunInfo, Series, Version

log = logging.getLogger(__name__)
# How long `update` waits for the current run's points to reach the server before publishing.
_UPDATE_FLUSH_SECONDS = 60.0

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

    When a run of this model is current (`lmvp.init_run`), the version is tied to it at the
    run's latest step: its points are sent first, and without `metrics` the version gets the
    run's latest values as its metrics.
    """
    run_id, step = _attach_current_run(model_ref)
    return default_client().update(
        model_ref,
        local_model,
        message=message,
        metadata=metadata,
        metrics=metrics,
        aliases=aliases,
        parent=parent,
        run=run_id,
        step=step,
    )


def show_history(
    project_or_model: str, *, limit: int = 20, file: IO[str] | None = None
) -> list[Version]:
    """Print the versions of a model (`"vision/resnet"`) or of a whole project (`"vision"`),
    newest first, and return them."""
    return default_client().show_history(project_or_model, limit=limit, file=file)


# The name the original README promised.
showHistory = show_history


def init_run(
    model_ref: str | ModelRef, name: str | None = None, params: dict[str, Any] | None = None
) -> Run:
    """Start a run of `model_ref` (created if needed) and make it the current run, named
    `name`, else after the job or its folder (`default_run_name`).

    Log with `run.log({"loss": 0.3}, step=10)` or `lmvp.log_metrics(...)`; points are sent
    in the background, in batches, and flushed at exit. End it with `run.finish()` (or use it
    as a context manager); starting another run finishes the current one first. `params`
    (hyperparameters, JSON) are stored with the run.
    """
    name = name or default_run_name()
    previous = runs.current_run()
    if previous is not None and not previous.finished:
        try:
            previous.finish()
        except LMVPError as exc:  # already logged when its points were refused
            log.warning("run %s finished with an error: %s", previous.id, exc)
    run = default_client().init_run(model_ref, name=name, params=params)
    runs.set_current(run)
    return run


# Where batch schedulers name the job (Slurm, PBS/Torque, LSF, Grid Engine); LMVP_RUN_NAME first.
_JOB_NAME_VARIABLES = ("LMVP_RUN_NAME", "SLURM_JOB_NAME", "PBS_JOBNAME", "LSB_JOBNAME", "JOB_NAME")


def default_run_name() -> str | None:
    """The name a run gets when `init_run` is given none: the job's (LMVP_RUN_NAME, or the
    batch scheduler's job name), else the folder the job runs in; None in the filesystem's
    root (the server then names it `run-N`)."""
    for variable in _JOB_NAME_VARIABLES:
        value = os.environ.get(variable, "").strip()
        if value and value not in ("bash", "sh", "interactive"):
            return value[:200]
    try:
        folder = Path.cwd().name
    except OSError:  # the working folder was deleted
        return None
    return folder[:200] or None


def log_metrics(metrics: Mapping[str, Any], step: int | None = None) -> None:
    """Log `metrics` (name -> number) at `step` on the current run; see `Run.log`.

    Raises `LMVPError` when no run is current: start one with `lmvp.init_run`.
    """
    run = runs.current_run()
    if run is None:
        raise LMVPError("no run is current: start one with lmvp.init_run('project/model')")
    run.log(metrics, step)


def get_metrics(
    run_or_version_ref: int | str | RunInfo | Run,
    keys: Sequence[str] | None = None,
    max_points: int | None = None,
) -> dict[str, Series]:
    """The metric series of a run, by key: each a `Series` with `steps`, `values` and
    `wall_times` lists.

    Give a run (its id, a `Run` or `RunInfo`) or a version reference such as
    `"vision/resnet:7"` (the run that version was taken from). `keys` picks metrics (default:
    all). With `max_points`, a series with more points is downsampled on the server to at
    most that many, keeping each bucket's first, last, minimum and maximum point; without it
    the server returns up to 100,000 points per key.

    Raises `NotFound` for an unknown run, or a version taken outside any run.
    """
    return default_client().metrics(run_or_version_ref, keys=keys, max_points=max_points)


def _attach_current_run(model_ref: str | ModelRef) -> tuple[int | None, int | None]:
    """The current run's id and latest step, if it is a run of `model_ref`, after sending
    its points (so a metrics snapshot taken by the server includes them)."""
    run = runs.current_run()
    if run is None or run.finished:
        return None, None
    ref = parse_ref(model_ref)
    if (run.project, run.model) != (ref.project, ref.model):
        return None, None
    try:
        run.flush(_UPDATE_FLUSH_SECONDS)
    except TimeoutError:
        log.warning(
            "run %s: points still unsent after %.0fs; the version's metrics may miss the latest",
            run.id,
            _UPDATE_FLUSH_SECONDS,
        )
    return run.id, run.last_step
