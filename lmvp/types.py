"""What the client returns: typed, immutable records of the server's resources; and what it
takes: `LocalFile`, a file on this disk to send, and `Progress`, the callback that counts the
bytes of a transfer."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

__all__ = [
    "Alias",
    "Event",
    "FileEntry",
    "LocalFile",
    "Member",
    "MetricKeySummary",
    "MetricPoint",
    "Model",
    "Progress",
    "Project",
    "RunInfo",
    "RunVersion",
    "Series",
    "Token",
    "User",
    "Version",
]


# Called with a number of bytes as a transfer advances: what reached the server (uploads) or
# this disk (downloads), negative when a dropped connection lost bytes that go again; the sum
# ends at the total. Every transfer of the client takes one (`progress=`).
Progress = Callable[[int], None]


def _time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def _maybe_time(value: str | None) -> datetime | None:
    return _time(value) if value else None


@dataclass(frozen=True)
class FileEntry:
    """One file of a version: its path inside the version, size in bytes and sha256."""

    path: str
    size: int
    sha256: str


@dataclass(frozen=True)
class LocalFile:
    """A file on this disk to send (`Client.send_files`): its path inside the version
    (`relpath`), where it is, its size, and its sha256 when known ("" when not)."""

    relpath: str
    path: Path
    size: int
    sha256: str = ""


@dataclass(frozen=True)
class Version:
    """An immutable, numbered version of a model."""

    project: str
    model: str
    number: int
    message: str
    metadata: dict[str, Any]
    metrics: dict[str, Any]
    author: str | None
    parent: int | None
    aliases: tuple[str, ...]
    size: int
    files: tuple[FileEntry, ...]
    source_host: str
    source_path: str
    created_at: datetime
    # The run the version was taken from, and the run's step then.
    run: int | None = None
    step: int | None = None

    @property
    def ref(self) -> str:
        """`project/model:N`, a reference that always means this version."""
        return f"{self.project}/{self.model}:{self.number}"

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Version:
        source = data.get("source") or {}
        return cls(
            project=data["project"],
            model=data["model"],
            number=data["number"],
            message=data.get("message", ""),
            metadata=data.get("metadata") or {},
            metrics=data.get("metrics") or {},
            author=data.get("author"),
            parent=data.get("parent"),
            aliases=tuple(data.get("aliases") or ()),
            size=data.get("size", 0),
            files=tuple(FileEntry(f["path"], f["size"], f["sha256"]) for f in data["files"]),
            source_host=source.get("host", ""),
            source_path=source.get("path", ""),
            created_at=_time(data["created_at"]),
            run=data.get("run"),
            step=data.get("step"),
        )


@dataclass(frozen=True)
class Model:
    project: str
    name: str
    description: str
    created_at: datetime
    latest_version: int | None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Model:
        return cls(
            data["project"],
            data["name"],
            data.get("description", ""),
            _time(data["created_at"]),
            data.get("latest_version"),
        )


@dataclass(frozen=True)
class Project:
    name: str
    description: str
    created_at: datetime
    role: str

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Project:
        return cls(
            data["name"],
            data.get("description", ""),
            _time(data["created_at"]),
            data["role"],
        )


@dataclass(frozen=True)
class Member:
    username: str
    display_name: str
    role: str
    created_at: datetime

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Member:
        return cls(
            data["username"], data.get("display_name", ""), data["role"], _time(data["created_at"])
        )


@dataclass(frozen=True)
class Alias:
    name: str
    version: int
    updated_at: datetime

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Alias:
        return cls(data["name"], data["version"], _time(data["updated_at"]))


@dataclass(frozen=True)
class Token:
    """An API token. `secret` is set only on the token just created: the server keeps a hash."""

    id: int
    name: str
    prefix: str
    scope: str
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None
    secret: str | None = field(default=None, repr=False)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Token:
        return cls(
            data["id"],
            data.get("name", ""),
            data["prefix"],
            data["scope"],
            _time(data["created_at"]),
            _maybe_time(data.get("expires_at")),
            _maybe_time(data.get("revoked_at")),
            _maybe_time(data.get("last_used_at")),
            data.get("token"),
        )


@dataclass(frozen=True)
class User:
    username: str
    display_name: str
    is_admin: bool

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> User:
        return cls(data["username"], data.get("display_name", ""), bool(data.get("is_admin")))


@dataclass(frozen=True)
class Event:
    """Something that changed on the server (a new version, a moved alias, ...)."""

    id: int
    kind: str
    project: str
    model: str | None
    version: int | None
    actor: str | None
    payload: dict[str, Any]
    created_at: datetime

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Event:
        return cls(
            data["id"],
            data["kind"],
            data["project"],
            data.get("model"),
            data.get("version"),
            data.get("actor"),
            data.get("payload") or {},
            _time(data["created_at"]),
        )


# --- runs and metrics ---------------------------------------------------------------------------

# JSON has no NaN or infinity: the server sends those values as these strings.
_NON_FINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


def metric_value(value: float | int | str | None) -> float:
    """A metric value as the server sends it (a number, "NaN", "Infinity", "-Infinity")."""
    if isinstance(value, str):
        return _NON_FINITE[value]
    return math.nan if value is None else float(value)


@dataclass(frozen=True)
class MetricPoint:
    """One point of a metric series. `value` may be NaN or infinite; `wall_time` is seconds
    since the Unix epoch (None: the time the server receives it)."""

    key: str
    step: int
    value: float
    wall_time: float | None = None


@dataclass(frozen=True)
class Series:
    """One metric of a run as parallel lists, ready to plot: `steps`, `values` (floats, NaN
    and infinities included) and `wall_times` (seconds since the epoch).

    `count` is the number of points stored in the asked range; when it is larger than
    `len(steps)`, the server downsampled the series (`downsampled`), keeping each bucket's
    first, last, minimum and maximum point.
    """

    key: str
    steps: list[int]
    values: list[float]
    wall_times: list[float]
    count: int
    downsampled: bool

    def __len__(self) -> int:
        return len(self.steps)

    def points(self) -> list[MetricPoint]:
        """The series as points."""
        return [
            MetricPoint(self.key, s, v, w)
            for s, v, w in zip(self.steps, self.values, self.wall_times, strict=True)
        ]

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Series:
        return cls(
            data["key"],
            list(data["steps"]),
            [v if type(v) is float else metric_value(v) for v in data["values"]],
            list(data["wall_times"]),
            data["count"],
            bool(data["downsampled"]),
        )


@dataclass(frozen=True)
class MetricKeySummary:
    """A metric of a run: how many points it has, its step range and latest value."""

    key: str
    count: int
    first_step: int | None
    last_step: int | None
    last_value: float | None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> MetricKeySummary:
        last = data.get("last_value")
        return cls(
            data["key"],
            data["count"],
            data.get("first_step"),
            data.get("last_step"),
            None if last is None else metric_value(last),
        )


@dataclass(frozen=True)
class RunVersion:
    """A version taken during a run, and the run's step then (where plots mark it)."""

    number: int
    step: int | None


@dataclass(frozen=True)
class RunInfo:
    """A run as the server records it: one training session of a model, with its parameters,
    status (`running`, `finished`, `failed`), metrics and the versions taken during it."""

    id: int
    project: str
    model: str
    name: str
    host: str
    params: dict[str, Any]
    status: str
    author: str | None
    started_at: datetime
    ended_at: datetime | None
    updated_at: datetime
    last_step: int | None
    point_count: int
    keys: tuple[MetricKeySummary, ...]
    versions: tuple[RunVersion, ...]

    @property
    def model_ref(self) -> str:
        """`project/model`, the model the run belongs to."""
        return f"{self.project}/{self.model}"

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RunInfo:
        return cls(
            id=data["id"],
            project=data["project"],
            model=data["model"],
            name=data.get("name", ""),
            host=data.get("host", ""),
            params=data.get("params") or {},
            status=data["status"],
            author=data.get("author"),
            started_at=_time(data["started_at"]),
            ended_at=_maybe_time(data.get("ended_at")),
            updated_at=_time(data["updated_at"]),
            last_step=data.get("last_step"),
            point_count=data.get("point_count", 0),
            keys=tuple(MetricKeySummary.from_json(k) for k in data.get("keys") or ()),
            versions=tuple(
                RunVersion(v["number"], v.get("step")) for v in data.get("versions") or ()
            ),
        )
