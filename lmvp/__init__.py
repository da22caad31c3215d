"""LMVP client: fetch, update and publish versioned models from anywhere.

    import lmvp
    path = lmvp.download("vision/resnet")                  # latest, verified, cached
    lmvp.show_history("vision")                             # the project's history
    lmvp.update("vision/resnet", path, message="fine-tuned on set B")

    run = lmvp.init_run("vision/resnet", params={"lr": 3e-4})
    run.log({"loss": 0.42}, step=100)                       # buffered, sent in the background
    lmvp.get_metrics(run, keys=["loss"], max_points=2000)   # downsampled on the server

`lmvp.Client` covers everything else (projects, members, aliases, tokens, live events).
"""

from __future__ import annotations

__version__ = "0.1.0"

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
from lmvp.client import Client
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
from lmvp.types import (
    Alias,
    Event,
    FileEntry,
    Member,
    MetricKeySummary,
    MetricPoint,
    Model,
    Project,
    RunInfo,
    RunVersion,
    Series,
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
    "FileEntry",
    "IntegrityError",
    "InvalidRef",
    "LMVPError",
    "Member",
    "MetricKeySummary",
    "MetricPoint",
    "Model",
    "ModelRef",
    "NotCached",
    "NotFound",
    "PermissionDenied",
    "Project",
    "ProtocolError",
    "RequestError",
    "Run",
    "RunInfo",
    "RunVersion",
    "Series",
    "ServerUnavailable",
    "Token",
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
