"""Model references: `project/model`, `project/model:7` or `:v7`, `project/model@alias`."""

from __future__ import annotations

import re
from dataclasses import dataclass

from lmvp.errors import InvalidRef

_NAME = r"[A-Za-z0-9][A-Za-z0-9._-]*"
_REF = re.compile(
    rf"^(?P<project>{_NAME})/(?P<model>{_NAME})"
    rf"(?::v?(?P<number>[0-9]+)|@(?P<alias>[A-Za-z][A-Za-z0-9._-]*))?$"
)


@dataclass(frozen=True)
class ModelRef:
    """A parsed reference. `version` is what the server's `versions/{ref}` takes: a number,
    an alias, or `latest`."""

    project: str
    model: str
    version: str = "latest"

    @property
    def name(self) -> str:
        return f"{self.project}/{self.model}"

    @property
    def is_latest(self) -> bool:
        return self.version == "latest"

    def __str__(self) -> str:
        if self.is_latest:
            return self.name
        if self.version.isdigit():
            return f"{self.name}:{self.version}"
        return f"{self.name}@{self.version}"


def parse_ref(ref: str | ModelRef) -> ModelRef:
    """Parse a model reference; raises `InvalidRef` saying what a reference looks like."""
    if isinstance(ref, ModelRef):
        return ref
    match = _REF.match(ref.strip()) if isinstance(ref, str) else None
    if match is None:
        raise InvalidRef(
            f"{ref!r} is not a model reference: use 'project/model' (latest), "
            "'project/model:7' (version 7) or 'project/model@production' (an alias)"
        )
    version = match["number"] or match["alias"] or "latest"
    if match["number"]:
        version = str(int(version))
    return ModelRef(match["project"], match["model"], version)


def parse_project_or_model(value: str) -> tuple[str, str | None]:
    """`'vision'` → ('vision', None); `'vision/resnet'` → ('vision', 'resnet')."""
    if "/" not in value:
        if not re.fullmatch(_NAME, value):
            raise InvalidRef(f"{value!r} is not a project name")
        return value, None
    ref = parse_ref(value)
    return ref.project, ref.model
