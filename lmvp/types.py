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
    "FileTensors",
    "KeepBest",
    "KeptVersion",
    "LocalFile",
    "Member",
    "MetricKeySummary",
    "MetricPoint",
    "Model",
    "ModelUsage",
    "Progress",
    "Project",
    "RemovedVersion",
    "Retention",
    "RetentionPolicy",
    "RetentionPreview",
    "RunInfo",
    "RunVersion",
    "Series",
    "TensorChange",
    "TensorComparison",
    "Token",
    "TrashItem",
    "Usage",
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
    # Bytes of the distinct blobs the project holds (None from a server that does not say).
    size: int | None = None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Project:
        return cls(
            data["name"],
            data.get("description", ""),
            _time(data["created_at"]),
            data["role"],
            data.get("size"),
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


# --- retention policies and the trash ---------------------------------------------------------


@dataclass(frozen=True)
class KeepBest:
    """Keep the `count` best versions by `metric` of their metrics: `mode` `min` (lower is
    better, a loss) or `max` (an accuracy)."""

    count: int
    metric: str
    mode: str = "min"


@dataclass(frozen=True)
class RetentionPolicy:
    """Which versions of a model to keep; the server moves every other one to the trash. The
    rules are a union, and aliased versions are always kept; give at least one rule."""

    keep_latest: int | None = None
    keep_best: tuple[KeepBest, ...] = ()
    keep_every_steps: int | None = None
    keep_every_hours: float | None = None
    keep_within_hours: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "keep_latest": self.keep_latest,
            "keep_best": [
                {"count": b.count, "metric": b.metric, "mode": b.mode} for b in self.keep_best
            ],
            "keep_every_steps": self.keep_every_steps,
            "keep_every_hours": self.keep_every_hours,
            "keep_within_hours": self.keep_within_hours,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> RetentionPolicy | None:
        if not data:
            return None
        return cls(
            keep_latest=data.get("keep_latest"),
            keep_best=tuple(
                KeepBest(b["count"], b["metric"], b.get("mode", "min"))
                for b in data.get("keep_best") or ()
            ),
            keep_every_steps=data.get("keep_every_steps"),
            keep_every_hours=data.get("keep_every_hours"),
            keep_within_hours=data.get("keep_within_hours"),
        )

    def describe(self) -> str:
        """The policy in words: 'aliased; latest 3; best 3 by val_loss (min); ...'."""
        parts = ["every aliased version"]
        if self.keep_latest:
            parts.append(f"the latest {self.keep_latest}")
        for b in self.keep_best:
            parts.append(f"the best {b.count} by {b.metric} ({b.mode})")
        if self.keep_every_steps:
            parts.append(f"one every {self.keep_every_steps} steps")
        if self.keep_every_hours:
            parts.append(f"one every {self.keep_every_hours:g} hours")
        if self.keep_within_hours:
            parts.append(f"everything younger than {self.keep_within_hours:g} hours")
        return "keep " + "; ".join(parts)


@dataclass(frozen=True)
class Retention:
    """A model's (or, with `model` None, a project's) retention: the policy set on it, and the
    one in force (`effective`: the model's own, else the project's default) and its `source`."""

    project: str
    model: str | None
    policy: RetentionPolicy | None
    effective: RetentionPolicy | None
    source: str | None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Retention:
        return cls(
            data["project"],
            data.get("model"),
            RetentionPolicy.from_json(data.get("policy")),
            RetentionPolicy.from_json(data.get("effective")),
            data.get("source"),
        )


@dataclass(frozen=True)
class KeptVersion:
    """A version a policy keeps, and every rule that keeps it (`alias:production`,
    `latest:3`, `best:3:val_loss:min`, `every-steps:5000`, `every-hours:6`, `within-hours:24`)."""

    number: int
    rules: tuple[str, ...]


@dataclass(frozen=True)
class RemovedVersion:
    """A version a policy removes (moves to the trash)."""

    number: int
    size: int
    step: int | None
    created_at: datetime


@dataclass(frozen=True)
class RetentionPreview:
    """What a policy keeps and removes, newest first, and the bytes freed once the removed
    versions leave the trash; `applied` when the server did it."""

    project: str
    model: str
    source: str | None
    policy: RetentionPolicy | None
    keep: tuple[KeptVersion, ...]
    remove: tuple[RemovedVersion, ...]
    bytes_freed: int
    applied: bool

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RetentionPreview:
        return cls(
            project=data["project"],
            model=data["model"],
            source=data.get("source"),
            policy=RetentionPolicy.from_json(data.get("policy")),
            keep=tuple(KeptVersion(k["number"], tuple(k["rules"])) for k in data["keep"]),
            remove=tuple(
                RemovedVersion(r["number"], r["size"], r.get("step"), _time(r["created_at"]))
                for r in data["remove"]
            ),
            bytes_freed=data["bytes_freed"],
            applied=data["applied"],
        )


@dataclass(frozen=True)
class ModelUsage:
    """What one model's versions (live or in the trash) take: `referenced_bytes` of the
    distinct blobs they reference, of which `exclusive_bytes` no other model of the project
    references (what removing the model would free)."""

    name: str
    referenced_bytes: int
    exclusive_bytes: int


@dataclass(frozen=True)
class Usage:
    """What a project's blobs take on the server: `bytes` of its `blobs` distinct blobs, of
    which `unreferenced_bytes` no version references any more (the garbage collector frees
    them), and each model's share (`models`)."""

    project: str
    bytes: int
    blobs: int
    unreferenced_bytes: int
    models: tuple[ModelUsage, ...]

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Usage:
        return cls(
            project=data["project"],
            bytes=data["bytes"],
            blobs=data["blobs"],
            unreferenced_bytes=data.get("unreferenced_bytes", 0),
            models=tuple(
                ModelUsage(m["name"], m["referenced_bytes"], m["exclusive_bytes"])
                for m in data.get("models") or ()
            ),
        )

    def model(self, name: str) -> ModelUsage | None:
        """The share of model `name`, None if the project has no such model."""
        return next((m for m in self.models if m.name == name), None)


@dataclass(frozen=True)
class TrashItem:
    """A version, model or project in the trash, restorable (`Client.restore(ref)`) until
    `purge_at`."""

    kind: str
    ref: str
    project: str
    model: str | None
    version: int | None
    deleted_at: datetime
    deleted_by: str | None
    reason: str | None
    purge_at: datetime
    size: int

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TrashItem:
        return cls(
            kind=data["kind"],
            ref=data["ref"],
            project=data["project"],
            model=data.get("model"),
            version=data.get("version"),
            deleted_at=_time(data["deleted_at"]),
            deleted_by=data.get("deleted_by"),
            reason=data.get("reason"),
            purge_at=_time(data["purge_at"]),
            size=data.get("size", 0),
        )


def _non_finite(value: float | str | None) -> float | None:
    """A number the server sent as JSON: a number, or "NaN" / "Infinity" / "-Infinity"."""
    if value is None:
        return None
    return float(value)


@dataclass(frozen=True)
class TensorChange:
    """One tensor of a file in either version (`Client.compare_tensors`): `change` is
    "added", "removed", "changed", "unchanged" or "reshaped" (dtype or shape differ).
    `relative_change` is ||a - b|| / ||a|| for a changed tensor (inf when ||a|| is 0), None
    for the others and for dtypes compared by bytes only (FP8, FP6, FP4)."""

    name: str
    change: str
    a_dtype: str | None
    b_dtype: str | None
    a_shape: tuple[int, ...] | None
    b_shape: tuple[int, ...] | None
    relative_change: float | None

    @property
    def percent(self) -> str:
        """The relative change as people read it: "0.412 %", "∞ %", "" (`percent_change`)."""
        return percent_change(self.relative_change)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TensorChange:
        a_shape, b_shape = data.get("a_shape"), data.get("b_shape")
        return cls(
            name=data["name"],
            change=data["change"],
            a_dtype=data.get("a_dtype"),
            b_dtype=data.get("b_dtype"),
            a_shape=tuple(a_shape) if a_shape is not None else None,
            b_shape=tuple(b_shape) if b_shape is not None else None,
            relative_change=_non_finite(data.get("relative_change")),
        )


def percent_change(relative: float | None) -> str:
    """A tensor's relative change as a percentage at 3 significant digits, as the CLI and the
    desktop show it: 0.00412 -> "0.412 %", 0.5 -> "50.0 %", 12.34 -> "1230 %"; "" for None;
    "∞ %" where version a was all zeros; "n/a" for NaN."""
    if relative is None:
        return ""
    if math.isnan(relative):
        return "n/a"
    if math.isinf(relative):
        return "∞ %"
    value = relative * 100
    if value == 0:
        return "0 %"
    if abs(value) >= 1000:
        return f"{float(f'{value:.3g}'):.0f} %"
    text = f"{value:#.3g}"
    if "e" not in text:
        text = text.rstrip(".")
    return f"{text} %"


@dataclass(frozen=True)
class FileTensors:
    """A safetensors file of version a and the file of version b it matches by role (None:
    the file was added or removed), with their tensors: changed (largest relative change
    first), reshaped, added, removed, unchanged (each by name)."""

    a_path: str | None
    b_path: str | None
    tensors: list[TensorChange]

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FileTensors:
        return cls(
            a_path=data.get("a_path"),
            b_path=data.get("b_path"),
            tensors=[TensorChange.from_json(t) for t in data["tensors"]],
        )


@dataclass(frozen=True)
class TensorComparison:
    """Two versions of a model tensor by tensor: `a` and `b` are their numbers, `files` the
    safetensors files (recognised by content) of either, `skipped` the paths of files that are
    not safetensors (nothing to say per tensor)."""

    a: int
    b: int
    files: list[FileTensors]
    skipped: list[str]

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TensorComparison:
        return cls(
            a=data["a"],
            b=data["b"],
            files=[FileTensors.from_json(f) for f in data["files"]],
            skipped=list(data.get("skipped", [])),
        )
