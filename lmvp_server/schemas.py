"""Request and response bodies of the HTTP API (pydantic), kept apart from the ORM models."""

from __future__ import annotations

import math
import re
from datetime import datetime
from typing import Annotated, Any, ClassVar, Literal, Self

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    model_validator,
)

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"
SHA256_PATTERN = r"^[0-9a-f]{64}$"
# The largest values the INTEGER and BIGINT columns hold on PostgreSQL (and SQLite): ids and
# numbers beyond them are refused as bad input instead of failing in the database.
MAX_INT = 2**31 - 1
MAX_BIGINT = 2**63 - 1

Username = Annotated[str, StringConstraints(pattern=NAME_PATTERN, min_length=1, max_length=64)]
ProjectName = Annotated[str, StringConstraints(pattern=NAME_PATTERN, min_length=1, max_length=64)]
ModelName = Annotated[str, StringConstraints(pattern=NAME_PATTERN, min_length=1, max_length=128)]
Sha256 = Annotated[str, StringConstraints(pattern=SHA256_PATTERN)]
RoleName = Literal["viewer", "contributor", "maintainer", "owner"]
Description = Annotated[str, StringConstraints(max_length=10_000)]
_RFC3339 = re.compile(
    r"^[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?"
    r"([Zz]|[+-][0-9]{2}:[0-9]{2})$"
)


def _rfc3339(value: object) -> object:
    """A time in a request body is RFC 3339 text, as the document says (`date-time`); pydantic
    alone also took numbers and digit strings as Unix times, and times without an offset."""
    if isinstance(value, datetime):
        return value
    if isinstance(value, str) and _RFC3339.match(value):
        return value
    raise ValueError("must be a date-time with its offset, like 2026-01-31T12:00:00Z")


RequestTime = Annotated[datetime, BeforeValidator(_rfc3339)]


class Strict(BaseModel):
    """A request body: unknown fields are refused, and so is anything that Python's json module
    lets through but a database or another JSON parser cannot hold (see `json_value_problem`)."""

    model_config = ConfigDict(extra="forbid")
    # Fields checked elsewhere, with a more precise message (manifest paths).
    unchecked_fields: ClassVar[frozenset[str]] = frozenset()

    @model_validator(mode="after")
    def _refuse_values_no_database_can_store(self) -> Self:
        for name in type(self).model_fields:
            if name in self.unchecked_fields:
                continue
            problem = json_value_problem(getattr(self, name), name)
            if problem:
                raise ValueError(problem)
        return self


def json_value_problem(value: object, where: str) -> str | None:
    """What makes `value` unstorable, or None.

    Python's json module reads `NaN` and `Infinity`, which are not JSON (PostgreSQL refuses
    them, SQLite would hand back null); PostgreSQL cannot store a NUL character in text or JSON;
    a lone surrogate (`"\\ud800"`) cannot be encoded as UTF-8 at all. Nested models check
    themselves.
    """
    if isinstance(value, str):
        if "\x00" in value:
            return f"{where} contains a NUL character"
        if any("\ud800" <= ch <= "\udfff" for ch in value):
            return f"{where} contains a lone surrogate, which is not Unicode text"
    elif isinstance(value, float):
        if not math.isfinite(value):
            return f"{where} is {value}, which JSON cannot carry: send null or leave it out"
    elif isinstance(value, int) and not -(2**63) <= value < 2**63:
        return f"{where} is an integer past 64 bits, which databases cannot hold: send it as text"
    elif isinstance(value, dict):
        for key, item in value.items():
            problem = json_value_problem(key, f"{where} key") or json_value_problem(
                item, f"{where}.{key}"
            )
            if problem:
                return problem
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            if problem := json_value_problem(item, f"{where}[{i}]"):
                return problem
    return None


class Out(BaseModel):
    model_config = ConfigDict(from_attributes=True)


# --- users and tokens ---------------------------------------------------------------------------


class LoginRequest(Strict):
    username: str = Field(max_length=64)
    password: str = Field(max_length=1024)
    token_name: str = Field(default="login", max_length=200)


class UserOut(Out):
    username: str
    display_name: str
    is_admin: bool
    created_at: datetime


class UserCreate(Strict):
    username: Username
    password: str = Field(min_length=8, max_length=1024)
    display_name: str = Field(default="", max_length=200)
    is_admin: bool = False


class TokenCreate(Strict):
    name: str = Field(default="", max_length=200)
    scope: Literal["read", "write"] = "write"
    expires_in_days: int | None = Field(default=None, ge=1, le=3650)


class TokenOut(Out):
    id: int
    name: str
    prefix: str
    scope: str
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None


class TokenCreated(TokenOut):
    token: str


class LoginResponse(BaseModel):
    token: str
    expires_at: datetime | None
    user: UserOut


# --- projects and members -----------------------------------------------------------------------


class ProjectCreate(Strict):
    name: ProjectName
    description: Description = ""


class ProjectUpdate(Strict):
    description: Description


class ProjectOut(BaseModel):
    name: str
    description: str
    created_at: datetime
    role: RoleName
    # Bytes of the distinct blobs the project holds (in listings; see GET .../usage).
    size: int | None = None


class ModelUsageOut(BaseModel):
    name: str
    # Bytes of the distinct blobs its versions (live or in the trash) reference.
    referenced_bytes: int
    # What removing the model would free: blobs no other model of the project references.
    exclusive_bytes: int


class UsageOut(BaseModel):
    project: str
    # Bytes and count of the distinct blobs the project holds.
    bytes: int
    blobs: int
    # Held but referenced by no version: the garbage collector frees these after its grace.
    unreferenced_bytes: int
    models: list[ModelUsageOut]
    # The chunks the project holds (issue 17) and what their frames take in the store
    # (compressed where that paid); blobs assembled from them count in `bytes` at full size.
    chunks: int = 0
    chunk_bytes: int = 0


class GCReportOut(BaseModel):
    dry_run: bool
    project_blobs_released: int
    blobs_freed: int
    bytes_freed: int
    orphans_removed: int
    uploads_removed: int | None
    duration_seconds: float
    # Chunks (issue 17): project rows let go, chunks freed, their stored bytes.
    project_chunks_released: int = 0
    chunks_freed: int = 0
    chunk_bytes_freed: int = 0


class MemberPut(Strict):
    role: RoleName


class MemberOut(BaseModel):
    username: str
    display_name: str
    role: RoleName
    created_at: datetime


# --- models, versions, aliases ------------------------------------------------------------------


class ModelCreate(Strict):
    name: ModelName
    description: Description = ""


class ModelUpdate(Strict):
    description: Description


class ModelOut(BaseModel):
    project: str
    name: str
    description: str
    created_at: datetime
    latest_version: int | None


class FileEntry(Strict):
    # Paths are checked in manifest.py, which can say precisely what is wrong with each.
    unchecked_fields: ClassVar[frozenset[str]] = frozenset({"path"})
    path: str = Field(max_length=4096)
    size: int = Field(ge=0)
    sha256: Sha256


class Source(Strict):
    host: str = Field(default="", max_length=255)
    path: str = Field(default="", max_length=4096)


class VersionCreate(Strict):
    files: list[FileEntry] = Field(min_length=1, max_length=10_000)
    message: str = Field(default="", max_length=10_000)
    metadata: dict[str, Any] = Field(default_factory=dict)
    metrics: dict[str, Any] = Field(default_factory=dict)
    parent: int | None = Field(default=None, ge=1, le=MAX_INT)
    idempotency_key: str | None = Field(default=None, min_length=1, max_length=128)
    source: Source = Field(default_factory=Source)
    # The run this version was taken from and the run's step then. Given both and no
    # `metrics`, the version's metrics are the run's latest values at or before `step`.
    run: int | None = Field(default=None, ge=1, le=MAX_INT)
    step: int | None = Field(default=None, ge=0, le=MAX_BIGINT)


class FileOut(Out):
    path: str
    size: int
    sha256: str


class VersionOut(BaseModel):
    project: str
    model: str
    number: int
    message: str
    metadata: dict[str, Any]
    metrics: dict[str, Any]
    author: str | None
    parent: int | None
    aliases: list[str]
    size: int
    file_count: int
    files: list[FileOut]
    source: Source
    idempotency_key: str | None
    created_at: datetime
    run: int | None = None
    step: int | None = None


class VersionPage(BaseModel):
    items: list[VersionOut]
    # Pass as `before` to get the next (older) page; null on the last page.
    next: int | None


class AliasPut(Strict):
    version: int = Field(ge=1, le=MAX_INT)


class AliasOut(BaseModel):
    name: str
    version: int
    updated_at: datetime


# --- blobs and events ---------------------------------------------------------------------------


class MissingRequest(Strict):
    sha256: list[Sha256] = Field(max_length=10_000)


class MissingResponse(BaseModel):
    missing: list[str]


# --- chunks (issue 17; lmvp_server/services/chunks.py) -------------------------------------------

# A chunk's raw bytes: at most 16 MiB (lmvp_server/chunk_frames.py MAX_CHUNK_SIZE).
ChunkSize = Annotated[int, Field(ge=0, le=16 * 1024 * 1024)]


class ChunksRequest(Strict):
    chunks: list[Sha256] = Field(max_length=10_000)


class ChunksMissingResponse(BaseModel):
    missing: list[str]


class PackResult(BaseModel):
    # Records newly stored in the project, records it already held, frame bytes received.
    stored: int
    skipped: int
    bytes: int


class AssembleChunk(Strict):
    sha256: Sha256
    size: ChunkSize


class AssembleRequest(Strict):
    sha256: Sha256
    size: int = Field(ge=0, le=MAX_BIGINT)
    chunks: list[AssembleChunk] = Field(max_length=1_000_000)


class AssembleResponse(BaseModel):
    sha256: str
    size: int


class ChunkSpanOut(BaseModel):
    sha256: str
    size: int
    offset: int


class ChunkListOut(BaseModel):
    sha256: str
    size: int
    chunks: list[ChunkSpanOut]


class EventOut(BaseModel):
    id: int
    kind: str
    project: str
    model: str | None
    version: int | None
    actor: str | None
    payload: dict[str, Any]
    created_at: datetime


class HistoryPage(BaseModel):
    items: list[EventOut]
    # Pass as `before` to get the next (older) page; null on the last page.
    next: int | None


# --- runs and metrics ---------------------------------------------------------------------------

RunStatusName = Literal["running", "finished", "failed"]
MetricKeyName = Annotated[str, StringConstraints(min_length=1, max_length=255)]
# JSON has no NaN or infinity: metric values travel as numbers or as one of these strings.
NON_FINITE_VALUES = ("NaN", "Infinity", "-Infinity")
_METRIC_VALUE_SCHEMA: dict[str, Any] = {
    "anyOf": [{"type": "number"}, {"type": "string", "enum": list(NON_FINITE_VALUES)}]
}


class RunCreate(Strict):
    model: ModelName
    # Empty: the server names the run `run-<id>`.
    name: str = Field(default="", max_length=200)
    host: str = Field(default="", max_length=255)
    params: dict[str, Any] = Field(default_factory=dict)
    started_at: RequestTime | None = None


class RunUpdate(Strict):
    """Finishing a run: status `finished` or `failed` (ended now unless `ended_at` is given);
    `running` again clears the end."""

    status: RunStatusName | None = None
    ended_at: RequestTime | None = None
    name: str | None = Field(default=None, min_length=1, max_length=200)
    params: dict[str, Any] | None = None


class MetricKeyOut(BaseModel):
    key: str
    count: int
    first_step: int | None
    last_step: int | None
    # A number, or "NaN" / "Infinity" / "-Infinity"; null when the key has no points.
    last_value: float | str | None


class RunVersionOut(BaseModel):
    """A version taken during the run, and the run's step then (where plots mark it)."""

    number: int
    step: int | None


class RunOut(BaseModel):
    id: int
    project: str
    model: str
    name: str
    host: str
    params: dict[str, Any]
    status: RunStatusName
    author: str | None
    started_at: datetime
    ended_at: datetime | None
    updated_at: datetime
    # The largest step of any key, and the number of points of all keys.
    last_step: int | None
    point_count: int
    keys: list[MetricKeyOut]
    versions: list[RunVersionOut]


class RunPage(BaseModel):
    items: list[RunOut]
    # Pass as `before` to get the next (older) page; null on the last page.
    next: int | None


def _numbers(values: Any) -> Any:
    """JSON numbers only: pydantic alone also took `true` as 1 and `"5"` as 5, which the
    document does not allow. Checked once per list, not per item, to keep large batches fast."""
    items = values if isinstance(values, list) else [values]
    if any(isinstance(v, bool | str) for v in items if v is not None):
        raise ValueError("must be numbers")
    return values


def _metric_values(values: Any) -> Any:
    """Numbers, or one of "NaN", "Infinity", "-Infinity" (not `true`, nor other text)."""
    items = values if isinstance(values, list) else [values]
    if any(
        isinstance(v, bool) or (isinstance(v, str) and v not in NON_FINITE_VALUES) for v in items
    ):
        raise ValueError('must be numbers, "NaN", "Infinity" or "-Infinity"')
    return values


class MetricPointIn(BaseModel):
    """One point. `wall_time` is seconds since the Unix epoch (default: when it arrives)."""

    model_config = ConfigDict(extra="forbid")
    key: MetricKeyName
    step: int = Field(ge=0, le=MAX_BIGINT)
    value: float = Field(json_schema_extra=_METRIC_VALUE_SCHEMA)
    wall_time: float | None = None

    @model_validator(mode="before")
    @classmethod
    def _json_types(cls, data: Any) -> Any:
        # One check per point rather than one per field: batches carry 200,000 of them.
        if isinstance(data, dict):
            _numbers([data.get("step", 0), data.get("wall_time", 0)])
            _metric_values(data.get("value", 0))
        return data


class MetricSeriesIn(BaseModel):
    """Points of one key as parallel lists: the compact form for large batches."""

    model_config = ConfigDict(extra="forbid")
    key: MetricKeyName
    steps: Annotated[list[int], BeforeValidator(_numbers)]
    values: Annotated[list[float], BeforeValidator(_metric_values)] = Field(
        json_schema_extra={"items": _METRIC_VALUE_SCHEMA}
    )
    wall_times: Annotated[list[float], BeforeValidator(_numbers)] | None = None


class MetricsBatch(BaseModel):
    """Points to add to a run, in either form or both. A point whose (key, step) the run holds
    already is ignored, so sending a batch twice changes nothing; within a batch the first
    point of a (key, step) wins.

    Not a `Strict` body: NaN and infinities are metric values like any other here."""

    model_config = ConfigDict(extra="forbid")
    points: list[MetricPointIn] = Field(default_factory=list)
    series: list[MetricSeriesIn] = Field(default_factory=list)


class MetricsIngested(BaseModel):
    # Points in the request, and how many of them were new.
    received: int
    inserted: int


class MetricSeriesOut(BaseModel):
    key: str
    steps: list[int]
    values: list[float | str] = Field(json_schema_extra={"items": _METRIC_VALUE_SCHEMA})
    wall_times: list[float]
    # Stored points in the asked step range; more than len(steps) when downsampled.
    count: int
    downsampled: bool


class MetricsOut(BaseModel):
    run: int
    series: list[MetricSeriesOut]


# --- per-tensor compare (services/tensor_compare.py) -------------------------------------------

TensorChangeName = Literal["changed", "reshaped", "added", "removed", "unchanged"]


class TensorChangeOut(BaseModel):
    name: str
    change: TensorChangeName
    a_dtype: str | None
    b_dtype: str | None
    a_shape: list[int] | None
    b_shape: list[int] | None
    # ‖a-b‖/‖a‖ of a changed tensor ("Infinity" when ‖a‖ is 0, "NaN" for NaN values); null
    # for the others, and for dtypes compared by bytes only (FP8, FP6, FP4).
    relative_change: float | str | None = Field(
        json_schema_extra={
            "anyOf": [
                {"type": "number"},
                {"type": "string", "enum": list(NON_FINITE_VALUES)},
                {"type": "null"},
            ]
        }
    )


class FileTensorsOut(BaseModel):
    # The file in version a and the one in b it matches by role (null: added or removed).
    a_path: str | None
    b_path: str | None
    # Changed (largest relative change first), reshaped, added, removed, unchanged.
    tensors: list[TensorChangeOut]


class TensorComparisonOut(BaseModel):
    a: int
    b: int
    files: list[FileTensorsOut]
    # Files not compared per tensor: not safetensors, or matched to one that is not.
    skipped: list[str]
