"""LMVP client: fetch, update and publish versioned models from anywhere.

    import lmvp
    path = lmvp.download("vision/resnet")                  # latest, verified, cached
    lmvp.show_history("vision")                             # the project's history
    lmvp.update("vision/resnet", path, message="fine-tuned on set B")

`lmvp.Client` covers everything else (projects, members, aliases, tokens, live events).
"""

from __future__ import annotations

__version__ = "0.1.0"

from lmvp.api import default_client, download, show_history, showHistory, update
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
    RequestError,
    ServerUnavailable,
)
from lmvp.refs import ModelRef, parse_ref
from lmvp.types import Alias, Event, FileEntry, Member, Model, Project, Token, User, Version

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
    "Model",
    "ModelRef",
    "NotCached",
    "NotFound",
    "PermissionDenied",
    "Project",
    "RequestError",
    "ServerUnavailable",
    "Token",
    "User",
    "Version",
    "__version__",
    "default_client",
    "download",
    "parse_ref",
    "showHistory",
    "show_history",
    "update",
]
