"""Retention and storage in the web console (issue 16), against the real server: the model page
says the policy in words (its own, or the project's default it inherits), marks every version
with the rules keeping it exactly as the API's preview does, lists what the next application
would remove with the bytes it frees, and lets maintainers (not viewers) set, change and remove
the policy with a form whose refusals stay on the page; the bytes stored per project and per
model are the API's figures. One Chromium check that the new parts fit a 390 px screen."""

from __future__ import annotations

import html
import json
import re
from typing import Any

import pytest

from lmvp_server.web.rendering import format_size
from tests.support import unique
from tests.web.conftest import Console, WebSession

# val_loss of v1..v12: the best two (lowest) are v3 and v5.
VAL_LOSS = [0.9, 0.5, 0.1, 0.8, 0.2, 0.7, 0.6, 0.85, 0.95, 0.99, 0.97, 0.98]
SHARED = b"tokenizer " * 300  # one file every version holds: never freed
POLICY_FORM = {
    "keep_latest": "3",
    "keep_best": "2:val_loss:min",
    "keep_every_steps": "500",
    "keep_every_hours": "",
    "keep_within_hours": "",
}
POLICY = {"keep_latest": 3, "keep_best": [{"count": 2, "metric": "val_loss", "mode": "min"}]}
# What the policy keeps (alias release on v2), by rule, and removes.
KEPT = {
    12: ["latest:3"],
    11: ["latest:3"],
    10: ["latest:3", "every-steps:500"],
    5: ["best:2:val_loss:min", "every-steps:500"],
    3: ["best:2:val_loss:min"],
    2: ["alias:release"],
    1: ["every-steps:500"],
}
REMOVED = [9, 8, 7, 6, 4]


def _text(page: str) -> str:
    """The page's text, roughly as a person reads it (tags dropped, entities decoded, spaces
    collapsed)."""
    text = " ".join(html.unescape(re.sub(r"<[^>]+>", " ", page)).split())
    return re.sub(r" ([;,.:)])", r"\1", text)


def _weights(number: int) -> bytes:
    return f"weights of v{number} ".encode() * (100 + number)


@pytest.fixture(scope="module")
def project(console: Console) -> str:
    """A project of these tests' own (the console's shared one keeps its first pages of
    history, audit log and search to the tests that read them), with the same people. The
    versions of these tests are the maintainer's, so that the owner's stay few in search."""
    d = console.deployment
    name = d.project(console.owner, prefix="kept")
    d.add_member(name, console.maintainer, "maintainer")
    d.add_member(name, console.viewer, "viewer")
    return name


def _model_with_versions(console: Console, project: str) -> str:
    """A new model of 12 versions (steps 100..1200, val_loss as above, v2 aliased
    `release`), each holding its own weights and the shared file; returns its address."""
    d = console.deployment
    model = unique("kept")
    for n in range(1, 13):
        r = d.commit(
            console.maintainer,
            project,
            model,
            {"weights.bin": _weights(n), "tokenizer.bin": SHARED},
            message=f"step {n * 100}",
            step=n * 100,
            metrics={"val_loss": VAL_LOSS[n - 1]},
        )
        assert r.status_code == 201, r.text
    base = f"/projects/{project}/models/{model}"
    assert console.owner.put(f"{base}/aliases/release", json={"version": 2}).status_code == 200
    return base


def _rows(page: str) -> dict[int, tuple[Any, str]]:
    """The version table's rows: number → (the rules in data-rules, the retention cell's text)."""
    rows = {}
    for number, cell in re.findall(
        r'<tr id="v(\d+)">.*?(<td class="(?:kept|goes)".*?</td>)\s*</tr>', page, re.S
    ):
        rules = re.search(r"data-rules='([^']*)'", cell)
        assert rules, cell
        rows[int(number)] = (json.loads(html.unescape(rules.group(1))), _text(cell))
    return rows


def _set_policy(web: WebSession, base: str, form: dict[str, str], **extra: str) -> Any:
    return web.post(f"{base}/retention", {"csrf": web.csrf(), **form, **extra})


def test_model_page_says_the_policy_marks_what_keeps_each_version_and_what_goes_next(
    console: Console, project: str, web_as: Any
) -> None:
    base = _model_with_versions(console, project)
    maint: WebSession = web_as(console.maintainer)
    page = maint.get(base).text
    assert "No retention policy: every version is kept." in _text(page)
    assert 'id="would-remove"' not in page and 'class="kept"' not in page

    # Setting a policy that would remove versions asks first, naming them and the bytes.
    asked = _set_policy(maint, base, POLICY_FORM)
    assert asked.status_code == 200
    tried = console.owner.post(
        f"{base}/retention/preview", json={**POLICY, "keep_every_steps": 500}
    ).json()
    assert [r["number"] for r in tried["remove"]] == REMOVED
    text = _text(asked.text)
    assert "would move 5 versions of" in text and "v9, v8, v7, v6, v4." in text
    assert f"{format_size(tried['bytes_freed'])} would be freed" in text
    assert console.owner.get(f"{base}/retention").json()["policy"] is None  # asking sets nothing
    r = _set_policy(maint, base, POLICY_FORM, confirmed="yes")
    assert r.status_code == 303 and r.headers["location"] == f"{base}#retention"
    assert console.owner.get(f"{base}/retention").json()["policy"] == {
        **POLICY,
        "keep_every_steps": 500,
        "keep_every_hours": None,
        "keep_within_hours": None,
    }

    # The audit log says who set which policy, in the same words.
    log = _text(maint.get(f"/projects/{project}/audit?kind=retention").text)
    assert "Retention policy set" in log
    assert "the best 2 by val_loss (lowest); one every 500 steps" in log
    preview = console.owner.get(f"{base}/retention/preview").json()
    assert {k["number"]: k["rules"] for k in preview["keep"]} == KEPT
    assert [r["number"] for r in preview["remove"]] == REMOVED
    # Freed: the removed versions' own weights; the shared file stays with the kept ones.
    assert preview["bytes_freed"] == sum(len(_weights(n)) for n in REMOVED)

    for who in (console.maintainer, console.viewer):
        page = web_as(who).get(base).text
        text = _text(page)
        assert (
            "Keep every aliased version; the latest 3; the best 2 by val_loss (lowest); one "
            "every 500 steps. Every other version goes to the trash." in text
        )
        rows = _rows(page)
        assert set(rows) == set(range(1, 13))
        # Every row's rules are the API preview's, and the removed ones say so.
        assert {n: rules for n, (rules, _) in rows.items() if rules is not None} == KEPT
        assert sorted(n for n, (rules, _) in rows.items() if rules is None) == sorted(REMOVED)
        assert rows[12][1] == "kept: latest 3"
        assert rows[10][1] == "kept: latest 3; one per 500 steps"
        assert rows[5][1] == "kept: best 2 by val_loss; one per 500 steps"
        assert rows[2][1] == "kept: alias release"
        assert rows[4][1] == "goes next"
        # The would-remove list and its bytes.
        listed = re.findall(r'<li data-number="(\d+)">', page)
        assert [int(n) for n in listed] == REMOVED
        assert (
            f"would move 5 versions to the trash, freeing {format_size(preview['bytes_freed'])}"
            in text
        )

    # Applying (the API's apply) removes exactly what the page said would go.
    applied = console.owner.post(f"{base}/retention/apply").json()
    assert [r["number"] for r in applied["remove"]] == REMOVED
    page = maint.get(base).text
    assert set(_rows(page)) == set(KEPT)
    assert "The next application would remove nothing" in _text(page)


def test_a_viewer_sees_the_policy_but_gets_no_form_and_is_refused(
    console: Console, project: str, web_as: Any
) -> None:
    base = _model_with_versions(console, project)
    assert console.owner.put(f"{base}/retention", json={"keep_latest": 8}).status_code == 200
    viewer: WebSession = web_as(console.viewer)
    page = viewer.get(base).text
    assert "Keep every aliased version; the latest 8." in _text(page)
    assert 'id="set-policy"' not in page and 'id="remove-policy"' not in page
    r = _set_policy(viewer, base, {**POLICY_FORM, "keep_latest": "1"}, confirmed="yes")
    assert r.status_code == 403
    r = viewer.post(f"{base}/retention/delete", {"csrf": viewer.csrf()})
    assert r.status_code == 403
    assert console.owner.get(f"{base}/retention").json()["policy"]["keep_latest"] == 8
    # The maintainer's page has both forms, filled with the policy in force.
    page = web_as(console.maintainer).get(base).text
    assert 'id="set-policy"' in page and 'id="remove-policy"' in page
    assert re.search(r'name="keep_latest"[^>]*value="8"', page)


def test_a_refused_policy_stays_on_the_model_page_with_what_was_typed(
    console: Console, project: str, web_as: Any
) -> None:
    base = _model_with_versions(console, project)
    maint: WebSession = web_as(console.maintainer)
    cases = [
        ({"keep_latest": "three"}, "keep_latest", "'three' is not a whole number"),
        ({"keep_best": "3:val_loss:lowest"}, "keep_best", "write it like 3:val_loss:min"),
        ({"keep_latest": "0"}, "keep_latest", "greater than or equal to 1"),
        ({"keep_every_hours": "-2"}, "keep_every_hours", "greater than or equal to 0.01"),
        ({}, "keep_latest", "give at least one rule"),
    ]
    for typed, field, message in cases:
        form = {**dict.fromkeys(POLICY_FORM, ""), "keep_best": "1:accuracy:max", **typed}
        if not typed:
            form["keep_best"] = ""
        r = _set_policy(maint, base, form)
        assert r.status_code == 422, (typed, r.status_code)
        page = r.text
        assert '<details id="policy-editor" open>' in page
        error = re.search(r'id="set-policy-error">([^<]*)<', page)
        assert error and message in html.unescape(error.group(1)), (typed, error)
        assert re.search(rf'name="{field}"[^>]*aria-invalid="true"', page), field
        for name, value in form.items():
            assert re.search(rf'name="{name}"[^>]*value="{re.escape(html.escape(value))}"', page)
        assert 'id="v12"' in page  # the whole model page, not an error page
    assert console.owner.get(f"{base}/retention").json()["policy"] is None

    # A policy that removes nothing now is set at once; removing it goes back to none.
    r = _set_policy(maint, base, {**dict.fromkeys(POLICY_FORM, ""), "keep_within_hours": "48"})
    assert r.status_code == 303
    assert console.owner.get(f"{base}/retention").json()["policy"]["keep_within_hours"] == 48
    assert "Keep every aliased version; everything younger than 48 hours." in _text(
        maint.get(base).text
    )
    r = maint.post(f"{base}/retention/delete", {"csrf": maint.csrf()})
    assert r.status_code == 303
    assert console.owner.get(f"{base}/retention").json()["policy"] is None
    assert "No retention policy: every version is kept." in _text(maint.get(base).text)


def test_a_model_without_a_policy_shows_the_project_default_it_inherits(
    console: Console, web_as: Any
) -> None:
    d = console.deployment
    project = d.project(console.owner, prefix="defaults")
    d.add_member(project, console.maintainer, "maintainer")
    d.add_member(project, console.viewer, "viewer")
    for n in (1, 2, 3):
        assert d.commit(console.maintainer, project, "m", {"w.bin": _weights(n)}).status_code == 201
    assert console.owner.put(f"/projects/{project}/retention", json=POLICY).status_code == 200
    web: WebSession = web_as(console.viewer)
    words = "Keep every aliased version; the latest 3; the best 2 by val_loss (lowest)."
    text = _text(web.get(f"/projects/{project}/models/m").text)
    assert f"The project's default applies: {words}" in text
    assert "The next application would remove nothing" in text
    assert f"Retention default of its models: {words}" in _text(
        web.get(f"/projects/{project}").text
    )


def _bytes_of(page: str, marker: str) -> int:
    found = re.search(marker + r'.*?data-bytes="(\d+)"', page, re.S)
    assert found, marker
    return int(found.group(1))


def test_storage_figures_are_the_apis(console: Console, web_as: Any) -> None:
    d = console.deployment
    project = d.project(console.owner, prefix="sized")
    d.add_member(project, console.maintainer, "maintainer")
    d.add_member(project, console.viewer, "viewer")
    # Two models sharing one file: it counts once for the project and frees nothing alone.
    for model, n in (("a", 1), ("a", 2), ("b", 3)):
        files = {"w.bin": _weights(n), "shared.bin": SHARED}
        assert d.commit(console.maintainer, project, model, files).status_code == 201
    usage = console.viewer.get(f"/projects/{project}/usage").json()
    listed = {p["name"]: p["size"] for p in console.viewer.get("/projects").json()}
    expected = len(SHARED) + sum(len(_weights(n)) for n in (1, 2, 3))
    assert usage["bytes"] == listed[project] == expected
    web: WebSession = web_as(console.viewer)
    projects_page = web.get("/").text
    row = re.search(rf'<a href="/projects/{project}">.*?</tr>', projects_page, re.S)
    assert row and _bytes_of(row.group(0), "") == expected
    assert format_size(expected) in _text(row.group(0))
    page = web.get(f"/projects/{project}").text
    assert _bytes_of(page, 'id="project-storage"') == expected
    models = {m["name"]: m for m in usage["models"]}
    for name in ("a", "b"):
        row = re.search(rf'<tr id="model-{name}">.*?</tr>', page, re.S)
        assert row
        cells = [int(b) for b in re.findall(r'data-bytes="(\d+)"', row.group(0))]
        assert cells == [models[name]["referenced_bytes"], models[name]["exclusive_bytes"]]
        model_page = _text(web.get(f"/projects/{project}/models/{name}").text)
        assert (
            f"use {format_size(models[name]['referenced_bytes'])}; deleting the model would "
            f"free {format_size(models[name]['exclusive_bytes'])}" in model_page
        )
    # The confirmation of a model's deletion says what the collector frees after the trash.
    owner = web_as(console.owner)
    text = _text(owner.get(f"/projects/{project}/models/a/delete").text)
    assert f"the garbage collector frees {format_size(models['a']['exclusive_bytes'])}" in text
    assert models["a"]["exclusive_bytes"] == len(_weights(1)) + len(_weights(2))
    assert models["b"]["exclusive_bytes"] == len(_weights(3))


def test_phone_sized_model_page_with_a_policy_has_no_sideways_scrolling(
    console: Console, project: str, new_page: Any
) -> None:
    base = _model_with_versions(console, project)
    policy = {**POLICY, "keep_every_steps": 500}
    assert console.owner.put(f"{base}/retention", json=policy).status_code == 200
    page = new_page(console.maintainer, viewport={"width": 390, "height": 844}, is_mobile=True)
    scroll = "document.documentElement.scrollWidth - document.documentElement.clientWidth"
    for path in ["/", f"/projects/{project}", base]:
        page.goto(path)
        assert page.evaluate(scroll) <= 0, path
    assert page.locator("#would-remove li").count() == len(REMOVED)
    assert page.locator("#v4 td.goes").is_visible()
    # The form opened, refused, with its message and kept values, fits too.
    page.click("#policy-editor summary")
    page.fill("#set-policy input[name=keep_latest]", "three")
    page.click("#set-policy button")
    assert page.locator("#set-policy-error").is_visible()
    assert page.locator("#set-policy input[name=keep_best]").input_value() == "2:val_loss:min"
    assert page.evaluate(scroll) <= 0
    # The trash with its "empty" link, and the page saying what emptying it purges.
    assert console.owner.delete(f"{base}/versions/6").status_code in (200, 204)
    for path in [f"/projects/{project}/trash", f"/projects/{project}/trash/empty"]:
        page.goto(path)
        assert page.evaluate(scroll) <= 0, path
    assert "will be removed for good" in page.locator("main").inner_text()


def test_a_maintainer_empties_the_trash_after_a_page_saying_what_goes(
    console: Console, web_as: Any
) -> None:
    d = console.deployment
    project = d.project(console.owner, prefix="emptied")
    d.add_member(project, console.maintainer, "maintainer")
    d.add_member(project, console.viewer, "viewer")
    for n in (1, 2, 3):
        files = {"w.bin": _weights(n), "shared.bin": SHARED}
        assert d.commit(console.maintainer, project, "kept", files).status_code == 201
    assert d.commit(console.maintainer, project, "gone", {"g.bin": _weights(9)}).status_code == 201
    base = f"/projects/{project}/models"
    for path in (f"{base}/kept/versions/1", f"{base}/kept/versions/2", f"{base}/gone"):
        assert console.owner.delete(path).status_code in (200, 204)
    trash = f"/projects/{project}/trash"

    viewer: WebSession = web_as(console.viewer)
    assert 'id="empty-trash"' not in viewer.get(trash).text
    assert viewer.get(f"{trash}/empty").status_code == 403
    r = viewer.post(f"{trash}/empty", {"csrf": viewer.csrf(), "confirmed": "yes"})
    assert r.status_code == 403

    maint: WebSession = web_as(console.maintainer)
    assert 'id="empty-trash"' in maint.get(trash).text
    page = maint.get(f"{trash}/empty")
    assert page.status_code == 200
    size = sum(len(_weights(n)) for n in (1, 2, 9)) + 2 * len(SHARED)
    assert (
        f"2 versions and 1 model with every version in it ({format_size(size)} of files) will "
        "be removed for good" in _text(page.text)
    )
    assert all(name in _text(page.text) for name in ("kept v1", "kept v2", "the model gone"))
    assert len(console.owner.get("/trash", params={"project": project}).json()) == 3
    # Deleted after the page was shown: stays in the trash.
    assert console.owner.delete(f"{base}/kept/versions/3").status_code in (200, 204)
    through = re.search(r'name="through" value="([^"]+)"', page.text)
    assert through
    r = maint.post(
        f"{trash}/empty",
        {"csrf": maint.csrf(), "confirmed": "yes", "through": html.unescape(through.group(1))},
    )
    assert r.status_code == 303 and r.headers["location"] == trash
    left = console.owner.get("/trash", params={"project": project}).json()
    assert [i["ref"] for i in left] == [f"{project}/kept:3"]
    assert console.owner.post(f"{base}/kept/versions/1/restore").status_code == 404
    assert console.owner.post(f"{base}/gone/restore").status_code == 404
    # What they alone held is now unreferenced: the garbage collector's to free.
    usage = console.owner.get(f"/projects/{project}/usage").json()
    assert usage["unreferenced_bytes"] == sum(len(_weights(n)) for n in (1, 2, 9))
    log = _text(maint.get(f"/projects/{project}/audit?kind=version").text)
    assert "Version purged" in log
