"""A project's audit log for people: every event with a readable name ("Alias moved", not
`alias.set`), its details as a sentence (sizes in KiB/MiB, "production → v3 (was v1)"), and a
filter by kind of change and by person, kept across pages."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Query, Request, Response
from pydantic import ValidationError

from lmvp_server.deps import SessionDep
from lmvp_server.models import Event, Role
from lmvp_server.retention_schemas import RetentionPolicy
from lmvp_server.schemas import MAX_BIGINT, ProjectName
from lmvp_server.services import console
from lmvp_server.services.access import open_project
from lmvp_server.web.rendering import PageRoute, format_size, render
from lmvp_server.web.session import WebCallerDep

router = APIRouter(route_class=PageRoute, include_in_schema=False)

PAGE_SIZE = 50

# What each kind of event is called on the page.
EVENT_NAMES = {
    "project.created": "Project created",
    "project.updated": "Project description changed",
    "project.deleted": "Project deleted",
    "project.restored": "Project restored",
    "model.created": "Model created",
    "model.updated": "Model description changed",
    "model.deleted": "Model deleted",
    "model.restored": "Model restored",
    "version.created": "Version committed",
    "version.deleted": "Version deleted",
    "version.restored": "Version restored",
    "version.purged": "Version purged",
    "model.purged": "Model purged",
    "project.purged": "Project purged",
    "retention.set": "Retention policy set",
    "retention.deleted": "Retention policy removed",
    "retention.applied": "Retention policy applied",
    "alias.set": "Alias set",
    "alias.deleted": "Alias removed",
    "member.added": "Member added",
    "member.role_changed": "Member's role changed",
    "member.removed": "Member removed",
    "run.created": "Run started",
    "run.finished": "Run ended",
}
# The filter's kinds of change: a family of events each.
FAMILIES = {
    "version": "Versions",
    "alias": "Aliases",
    "member": "Members",
    "model": "Models",
    "run": "Runs",
    "retention": "Retention",
    "project": "Project",
}


@dataclass(frozen=True)
class AuditRow:
    """One event as the page shows it."""

    id: int
    name: str
    kind: str
    actor: str | None
    created_at: Any
    model: str | None
    version: int | None
    details: str


@router.get("/projects/{project}/audit")
def audit_page(
    request: Request,
    project: ProjectName,
    caller: WebCallerDep,
    session: SessionDep,
    before: Annotated[int | None, Query(ge=1, le=MAX_BIGINT)] = None,
    kind: Annotated[str, Query(max_length=64)] = "",
    who: Annotated[str, Query(max_length=64)] = "",
) -> Response:
    """Everything that changed in the project, newest first, of one kind of change and by one
    person when chosen."""
    scope = open_project(session, caller, project, Role.viewer)
    events, older = console.audit_events(
        session, scope.project, kind=kind or None, actor=who or None, before=before, limit=PAGE_SIZE
    )
    choices = console.audit_filter(session, scope.project)
    families = {k.split(".")[0] for k in choices.kinds}
    query = urlencode([(n, v) for n, v in (("kind", kind), ("who", who)) if v])
    return render(
        request,
        "audit.html",
        {
            "project": scope.project,
            "role": scope.role.name,
            "events": [describe(e) for e in events],
            "older": older,
            "paged": before is not None,
            "kind": kind,
            "who": who,
            "filter_query": query,
            "families": [(k, label) for k, label in FAMILIES.items() if k in families],
            "kinds": [(k, event_name(k)) for k in choices.kinds],
            "actors": choices.actors,
        },
    )


def event_name(kind: str) -> str:
    """What a kind of event is called for people: `alias.set` → "Alias set"."""
    return EVENT_NAMES.get(kind) or kind.replace(".", " ").replace("_", " ").capitalize()


def describe(event: Event) -> AuditRow:
    """The event as a row of the page: its name and a sentence of details."""
    payload: Mapping[str, Any] = event.payload or {}
    name = event_name(event.kind)
    if event.kind == "alias.set" and payload.get("previous") is not None:
        name = "Alias moved"
    return AuditRow(
        id=event.id,
        name=name,
        kind=event.kind,
        actor=event.actor.username if event.actor else None,
        created_at=event.created_at,
        model=event.model_name,
        version=event.version_number,
        details=details_of(event.kind, payload),
    )


def details_of(kind: str, payload: Mapping[str, Any]) -> str:
    """The event's payload as a short sentence; unknown keys as `key: value`, empty ones left
    out."""
    if kind == "alias.set":
        text = f"{payload.get('alias')} → this version"
        previous = payload.get("previous")
        return text + (f" (was v{previous})" if previous is not None else "")
    if kind == "alias.deleted":
        return str(payload.get("alias", ""))
    if kind == "version.created":
        parts = []
        if payload.get("message"):
            parts.append(f"“{payload['message']}”")
        if payload.get("size") is not None:
            count = payload.get("file_count")
            files = f" in {count} file{'' if count == 1 else 's'}" if count is not None else ""
            parts.append(format_size(int(payload["size"])) + files)
        return ", ".join(parts)
    if kind.endswith(".deleted") and payload.get("trash"):
        text = "to the trash"
        reason = payload.get("reason")
        if reason and reason != "by hand":
            text += f" ({reason})"
        if payload.get("aliases"):
            text += "; aliases removed: " + ", ".join(map(str, payload["aliases"]))
        return text
    if kind.endswith(".restored"):
        back = payload.get("aliases")
        return "with its aliases " + ", ".join(map(str, back)) if back else "out of the trash"
    if kind == "retention.applied":
        removed = payload.get("removed") or []
        text = f"{len(removed)} version{'' if len(removed) == 1 else 's'} to the trash"
        if removed:
            shown = ", ".join(f"v{n}" for n in removed[:8])
            text += f" ({shown}{', …' if len(removed) > 8 else ''})"
        if payload.get("bytes_freed") is not None:
            text += f", {format_size(int(payload['bytes_freed']))} to be freed"
        return text
    if kind.startswith("retention.") and isinstance(payload.get("policy"), dict):
        try:
            return console.policy_words(RetentionPolicy.model_validate(payload["policy"]))
        except ValidationError:  # a policy of an older form: its fields as they are
            rules = payload["policy"]
            parts = [f"{k.replace('_', ' ')} {v}" for k, v in sorted(rules.items()) if v]
            return "; ".join(parts)
    if kind.startswith("member."):
        who = payload.get("username", "")
        return f"{who} as {payload['role']}" if payload.get("role") else str(who)
    if kind.startswith("run."):
        text = str(payload.get("name") or f"run {payload.get('run', '')}")
        if payload.get("host"):
            text += f" on {payload['host']}"
        if kind == "run.finished" and payload.get("status"):
            text += f": {payload['status']}"
        return text
    parts = []
    for key, value in sorted(payload.items()):
        if value is None or value == "" or value is False:
            continue
        if key in ("size", "bytes") and isinstance(value, int):
            value = format_size(value)
        parts.append(f"{key.replace('_', ' ')}: {value}")
    return "; ".join(parts)
