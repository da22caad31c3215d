"""The retention form of a model's page (maintainers): set or change the model's own policy, or
remove it, through `services.retention` like `lmvp retention set` / `unset` and the API's
`PUT` / `DELETE .../retention`.

Setting a policy that would remove versions at its next application first shows a confirmation
page naming them and the bytes that go (the service's preview of the typed policy); a policy
that removes nothing now is set at once. A refused form (a rule that is not a number, a policy
without any rule, values out of range) is shown on the model's page with what was typed kept;
a viewer's post is refused with 403 like the API's.
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import RedirectResponse
from pydantic import ValidationError
from starlette.datastructures import FormData

from lmvp_server.deps import SessionDep
from lmvp_server.errors import APIError
from lmvp_server.models import Role
from lmvp_server.retention_schemas import RetentionPolicy
from lmvp_server.schemas import ModelName, ProjectName
from lmvp_server.services import console, retention
from lmvp_server.services.access import open_model
from lmvp_server.web.forms import FormProblem, confirm_page, form_text, form_values, is_confirmed
from lmvp_server.web.pages import POLICY_FIELDS, show_model
from lmvp_server.web.rendering import PageError, PageRoute, format_size
from lmvp_server.web.session import CheckedFormDep, WebCallerDep

router = APIRouter(route_class=PageRoute, include_in_schema=False)

FORM_STATUSES = frozenset({404, 409, 413, 422})
# The versions a confirmation names before "and N more".
NAMED = 30
_LABELS = {
    "keep_latest": "Keep the latest",
    "keep_best": "Keep the best by a metric",
    "keep_every_steps": "Keep one version every (steps)",
    "keep_every_hours": "Keep one version every (hours)",
    "keep_within_hours": "Keep everything younger than (hours)",
}


@router.post("/projects/{project}/models/{model}/retention")
def set_policy(
    request: Request,
    project: ProjectName,
    model: ModelName,
    form: CheckedFormDep,
    caller: WebCallerDep,
    session: SessionDep,
) -> Response:
    """Set the model's own policy (maintainers), once confirmed when it would remove versions;
    back to the model's page."""
    base = f"/projects/{project}/models/{model}"
    try:
        scope = open_model(session, caller, project, model, Role.maintainer)
        policy = policy_from_form(form)
        if not is_confirmed(form):
            preview = retention.preview(session, caller, project, model, policy)
            if preview.remove:
                count = len(preview.remove)
                named = ", ".join(f"v{r.number}" for r in preview.remove[:NAMED])
                more = f" and {count - NAMED} more" if count > NAMED else ""
                return confirm_page(
                    request,
                    title=f"Set this policy on {model}?",
                    lines=[
                        console.policy_words(policy),
                        f"Applied now it would move {count} version{'' if count == 1 else 's'} "
                        f"of {project}/{model} to the trash: {named}{more}. That happens after "
                        "the next commit to the model, or at the server's scheduled pass.",
                        f"{format_size(preview.bytes_freed)} would be freed once "
                        f"{'it leaves' if count == 1 else 'they leave'} the trash; until then "
                        "a maintainer can restore them from the project's Trash page.",
                    ],
                    action=f"{base}/retention",
                    fields=form_values(form, *POLICY_FIELDS),
                    button="Set the policy",
                    cancel=base,
                    context={"project": scope.project, "role": scope.role.name},
                )
        retention.set_model_policy(session, caller, project, model, policy)
    except (APIError, PageError) as exc:
        if exc.status not in FORM_STATUSES:
            raise
        session.rollback()
        problem = FormProblem(
            "set-policy",
            exc.message,
            form_values(form, *POLICY_FIELDS),
            getattr(exc, "field", None),
        )
        return show_model(
            request, session, caller, project, model, problem=problem, status=exc.status
        )
    return RedirectResponse(f"{base}#retention", status_code=303)


@router.post("/projects/{project}/models/{model}/retention/delete")
def remove_policy(
    project: ProjectName,
    model: ModelName,
    form: CheckedFormDep,
    caller: WebCallerDep,
    session: SessionDep,
) -> Response:
    """Remove the model's own policy (maintainers): the project's default applies, if any;
    back to the model's page."""
    retention.set_model_policy(session, caller, project, model, None)
    return RedirectResponse(f"/projects/{project}/models/{model}#retention", status_code=303)


class PolicyFormError(PageError):
    """A retention form that cannot make a policy, and the field to blame."""

    def __init__(self, message: str, field: str | None) -> None:
        super().__init__(422, message)
        self.field = field


def policy_from_form(form: FormData) -> RetentionPolicy:
    """The policy the retention form describes; PolicyFormError saying which rule is wrong."""
    values: dict[str, object] = {}
    for name, kind in (
        ("keep_latest", int),
        ("keep_every_steps", int),
        ("keep_every_hours", float),
        ("keep_within_hours", float),
    ):
        text = form_text(form, name)
        if not text:
            continue
        try:
            values[name] = kind(text)
        except ValueError:
            whole = "a whole number" if kind is int else "a number"
            raise PolicyFormError(
                f"{_LABELS[name]}: {text!r} is not {whole}; give {whole}, or leave it empty",
                name,
            ) from None
    best = []
    for entry in form_text(form, "keep_best").split(","):
        entry = entry.strip()
        if not entry:
            continue
        count, _, rest = entry.partition(":")
        metric, colon, mode = rest.rpartition(":")
        if not colon:
            metric, mode = rest, "min"
        if not count.strip().isdigit() or not metric.strip() or mode.strip() not in ("min", "max"):
            raise PolicyFormError(
                f"{_LABELS['keep_best']}: {entry!r} is not COUNT:METRIC:min or "
                "COUNT:METRIC:max; write it like 3:val_loss:min (several: separate them with "
                "commas)",
                "keep_best",
            )
        best.append({"count": int(count), "metric": metric.strip(), "mode": mode.strip()})
    if best:
        values["keep_best"] = best
    if not values:
        raise PolicyFormError(
            "give at least one rule; to stop removing versions, remove the model's policy instead",
            "keep_latest",
        )
    try:
        return RetentionPolicy.model_validate(values)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = first.get("loc") or ()
        blamed = str(where[0]) if where else None
        label = _LABELS.get(blamed or "", "The policy")
        raise PolicyFormError(f"{label}: {first.get('msg', 'not accepted')}", blamed) from None
