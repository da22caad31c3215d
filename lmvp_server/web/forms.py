"""How a console form that was refused is shown: on the page that had the form, with the
service's message next to it and what was typed kept (`FormProblem`), and the confirmation
page that changes which lose something (moving or removing an alias, deleting a version or a
model) go through first (`confirm_page`).

A refused form never lands on a bare error page: the action that received it renders the same
page again through the page's `show_*` function, passing the problem, with the refusal's
status (404, 409, 422...), so the browser's back button and the address still make sense.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from fastapi import Request
from fastapi.responses import HTMLResponse
from starlette.datastructures import FormData

from lmvp_server.web.rendering import render

# A field of a form that a confirmation page sends back once the user said yes.
CONFIRMED_FIELD = "confirmed"


@dataclass(frozen=True)
class FormProblem:
    """Why the form with id `form` was refused, and what it held when it was sent."""

    form: str
    message: str
    values: Mapping[str, str] = field(default_factory=dict)
    field: str | None = None


def form_text(form: FormData, name: str) -> str:
    """A text field of the form, stripped; '' when it is missing or a file."""
    value = form.get(name)
    return value.strip() if isinstance(value, str) else ""


def form_values(form: FormData, *names: str) -> dict[str, str]:
    """The named text fields of the form, as typed (for refilling it)."""
    return {name: form_text(form, name) for name in names}


def is_confirmed(form: FormData) -> bool:
    """Whether the form came from a confirmation page's "yes" button."""
    return form_text(form, CONFIRMED_FIELD) == "yes"


def confirm_page(
    request: Request,
    *,
    title: str,
    lines: Sequence[str],
    action: str,
    fields: Mapping[str, str],
    button: str,
    cancel: str,
    context: Mapping[str, object],
    danger: bool = True,
) -> HTMLResponse:
    """A page saying what will happen (`lines`) with a button that posts `fields` (and
    `confirmed=yes`) to `action`, and a link back to `cancel`."""
    return render(
        request,
        "confirm.html",
        {
            **context,
            "title": title,
            "lines": list(lines),
            "action": action,
            "fields": {**fields, CONFIRMED_FIELD: "yes"},
            "button": button,
            "cancel": cancel,
            "danger": danger,
        },
    )
