"""Request and response bodies of the trash and retention endpoints (pydantic), beside
`schemas.py`: a retention policy as users write it, a preview of what it keeps and removes, and
an item of the trash."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, JsonValue, StringConstraints, model_validator
from pydantic.config import JsonDict

from lmvp_server.schemas import Strict

MetricName = Annotated[str, StringConstraints(min_length=1, max_length=255)]


class BestRule(Strict):
    """Keep the `count` best versions by a metric of their metrics snapshot."""

    count: int = Field(ge=1, le=1_000_000)
    metric: MetricName
    mode: Literal["min", "max"] = Field(description="`min`: lower is better; `max`: higher is.")


def _rule(name: str, schema: JsonDict) -> JsonValue:
    return {"required": [name], "properties": {name: schema}}


_ONE_RULE: list[JsonValue] = [
    _rule("keep_latest", {"type": "integer"}),
    _rule("keep_best", {"type": "array", "minItems": 1}),
    _rule("keep_every_steps", {"type": "integer"}),
    _rule("keep_every_hours", {"type": "number"}),
    _rule("keep_within_hours", {"type": "number"}),
]


class RetentionPolicy(Strict):
    """Which versions of a model to keep; every other one is moved to the trash.

    The rules are a union: a version kept by any rule is kept. Aliased versions are always
    kept. At least one rule is needed (a policy that keeps nothing but aliases is refused)."""

    # The document says what `_keeps_something` checks: one rule at least, given and not null.
    model_config = ConfigDict(extra="forbid", json_schema_extra={"anyOf": _ONE_RULE})

    keep_latest: int | None = Field(default=None, ge=1, le=1_000_000)
    keep_best: list[BestRule] = Field(default_factory=list, max_length=20)
    keep_every_steps: int | None = Field(
        default=None,
        ge=1,
        # Below 2**53, so that a JSON number near the bound means the same to every parser.
        le=10**15,
        description="Keep the first version (lowest step) of every stretch of this many steps.",
    )
    keep_every_hours: float | None = Field(
        default=None,
        # At least 36 s: a stretch of 1e-308 hours made every version's stretch number infinite
        # (the fuzzer found a 500), and stretches shorter than a commit take say nothing.
        ge=0.01,
        le=1e6,
        description="Keep the first version of every stretch of this many hours (at least 0.01).",
    )
    keep_within_hours: float | None = Field(
        default=None, gt=0, le=1e7, description="Keep every version younger than this."
    )

    @model_validator(mode="after")
    def _keeps_something(self) -> Self:
        if not (
            self.keep_latest
            or self.keep_best
            or self.keep_every_steps
            or self.keep_every_hours
            or self.keep_within_hours
        ):
            raise ValueError(
                "a policy needs at least one rule (keep_latest, keep_best, keep_every_steps, "
                "keep_every_hours or keep_within_hours); to stop removing versions, delete the "
                "policy instead"
            )
        return self


class RetentionOut(BaseModel):
    """A model's (or a project's) retention policy, and the one that applies."""

    project: str
    model: str | None
    policy: RetentionPolicy | None = Field(
        description="The policy set on this model (or this project's default); null if none."
    )
    effective: RetentionPolicy | None = Field(
        description="What applies to the model: its own policy, else the project's default."
    )
    source: Literal["model", "project"] | None


class KeptVersion(BaseModel):
    number: int
    rules: list[str] = Field(
        description="Every rule that keeps it: `alias:NAME`, `latest:N`, "
        "`best:K:METRIC:min|max`, `every-steps:S`, `every-hours:H`, `within-hours:T`."
    )


class RemovedVersion(BaseModel):
    number: int
    size: int
    step: int | None
    created_at: datetime


class RetentionPreview(BaseModel):
    """What a policy keeps (and why) and removes, newest first; `applied` when it was done."""

    project: str
    model: str
    source: Literal["model", "project"] | None
    policy: RetentionPolicy | None
    keep: list[KeptVersion]
    remove: list[RemovedVersion]
    bytes_freed: int = Field(
        description="Bytes of the blobs that the removed versions reference and no other "
        "version of the project (live or in the trash) does: what the garbage collector frees "
        "once they are purged from the trash."
    )
    applied: bool


class TrashItem(BaseModel):
    """A version, model or project in the trash."""

    kind: Literal["version", "model", "project"]
    ref: str = Field(description="What `lmvp trash restore` takes: `p`, `p/m` or `p/m:N`.")
    project: str
    model: str | None
    version: int | None
    deleted_at: datetime
    deleted_by: str | None
    reason: str | None
    purge_at: datetime
    size: int = Field(description="Bytes of its files (a model's or project's: all versions).")
