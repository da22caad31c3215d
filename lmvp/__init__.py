"""LMVP client: fetch, update and publish versioned models from anywhere.

    import lmvp
    path = lmvp.download("vision/resnet")                  # latest, verified, cached
    lmvp.show_history("vision")                             # the project's history
    lmvp.update("vision/resnet", path, message="fine-tuned on set B")

    run = lmvp.init_run("vision/resnet", params={"lr": 3e-4})
    run.log({"loss": 0.42}, step=100)                       # buffered, sent in the background
    lmvp.get_metrics(run, keys=["loss"], max_points=2000)   # downsampled on the server

`lmvp.Client` covers everything else (projects, members, aliases, tokens, live events, and
the steps of `update` one by one: `send_files`, then `commit_version`, for a sync daemon).

The public API is what this package exports (`__all__`) and the modules `lmvp.errors`,
`lmvp.types`, `lmvp.refs`, `lmvp.credentials` (the saved login), `lmvp.history` (how
versions and sizes are written out), `lmvp.private_files` (files and folders only their owner
may read) and `lmvp.cli` (the `lmvp` command, and `command_as_typed` for other programs'
hints). Every other module is the client's own and may change at any time.
"""

from __future__ import annotations

from lmvp._version import __version__
from lmvp.api import (
    default_client,
    download,
    get_metrics,
    init_run,
    log_metrics,
    show_history,
    showHistory,
    update,
)
from lmvp.client import Client, EventStream
from lmvp.errors import (
    AuthenticationError,
    ConfigurationError,
    Conflict,
    IntegrityError,
    InvalidRef,
    LMVPError,
    NotCached,
    NotFound,
    PermissionDenied,
    ProtocolError,
    RequestError,
    ServerUnavailable,
)
from lmvp.refs import ModelRef, parse_ref
from lmvp.runs import Run, current_run
from lmvp.throttle import Throttle, TransferPaused
from lmvp.types import (
    Alias,
    Event,
    FileEntry,
    FileTensors,
    LocalFile,
    Member,
    MetricKeySummary,
    MetricPoint,
    Model,
    Progress,
    Project,
    RunInfo,
    RunVersion,
    Series,
    TensorChange,
    TensorComparison,
    Token,
    User,
    Version,
)

__all__ = [
    "Alias",
    "AuthenticationError",
    "Client",
    "ConfigurationError",
    "Conflict",
    "Event",
    "EventStream",
    "FileEntry",
    "FileTensors",
    "IntegrityError",
    "InvalidRef",
    "LMVPError",
    "LocalFile",
    "Member",
    "MetricKeySummary",
    "MetricPoint",
    "Model",
    "ModelRef",
    "NotCached",
    "NotFound",
    "PermissionDenied",
    "Progress",
    "Project",
    "ProtocolError",
    "RequestError",
    "Run",
    "RunInfo",
    "RunVersion",
    "Series",
    "ServerUnavailable",
    "TensorChange",
    "TensorComparison",
    "Throttle",
    "Token",
    "TransferPaused",
    "User",
    "Version",
    "__version__",
    "current_run",
    "default_client",
    "download",
    "get_metrics",
    "init_run",
    "log_metrics",
    "parse_ref",
    "showHistory",
    "show_history",
    "update",
]
