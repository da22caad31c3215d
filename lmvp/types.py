"""What the client returns: typed, immutable records of the server's resources."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

__all__ = [
    "Alias",
    "Event",
    "FileEntry",
    "Member",
    "Model",
    "Project",
    "Token",
    "User",
    "Version",
]


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
