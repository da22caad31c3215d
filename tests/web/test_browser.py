"""The web console in a real headless Chromium against the real server: logging in, browsing
to a model and a version, downloading a file, moving aliases by role, managing members, the
run's chart with its checkpoint markers, a phone-sized screen, and pages without JavaScript."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from tests.support import unique
from tests.web.conftest import CHECKPOINT_STEPS, Console


def test_logs_in_and_browses_from_projects_to_a_model_and_one_of_its_versions(
    console: Console, new_page: Any
) -> None:
    page = new_page()
    page.goto(console.model_path)  # not logged in: the login form, then back here
    assert "/login" in page.url
    page.fill("input[name=username]", console.viewer.username)  # type: ignore[attr-defined]
    page.fill("input[name=password]", console.password(console.viewer))
    page.click("button[type=submit]")
    page.wait_for_url(console.url + console.model_path)

    page.click("a.brand")
    page.click(f"text={console.project}")
    page.click("table >> text=resnet")
    rows = page.locator("table.versions tbody tr")
    assert rows.count() == 3
    newest = rows.nth(0).inner_text()
    assert "v3" in newest and "checkpoint at step 750" in newest
    assert console.owner.username in newest  # type: ignore[attr-defined]
    assert "750" in newest  # the step
    assert page.locator("table.versions th", has_text="loss").count() == 1  # key metrics
    assert "production" in rows.nth(2).inner_text()

    page.click("table.versions >> text=v2")
    page.wait_for_url(f"**{console.model_path}/versions/2")
    assert page.locator("h1").inner_text().startswith("resnet v2")
    assert page.locator("#download-line").inner_text() == (
        f'lmvp.download("{console.project}/resnet:2")'
    )
    files = page.locator("table.files tbody tr")
    assert files.count() == 2
    assert "config/config.json" in files.nth(0).inner_text()
    meta = page.locator("dl.meta").first.inner_text()
    assert "v1" in meta and "v3" in meta  # parent and child: the lineage
    assert "lr-sweep" in meta  # the run it came from
    assert '"framework": "torch"' in page.locator("pre.json").inner_text()
    # The copy button puts the line on the clipboard.
    page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    page.click("button.copy")
    assert page.evaluate("navigator.clipboard.readText()") == (
        f'lmvp.download("{console.project}/resnet:2")'
    )


def test_downloads_a_file_of_a_version_with_the_right_sha256(
    console: Console, new_page: Any, tmp_path: Path
) -> None:
    page = new_page(console.viewer)
    page.goto(f"{console.model_path}/versions/3")
    with page.expect_download() as info:
        page.click("a.download >> text=model.safetensors")
    download = info.value
    assert download.suggested_filename == "model.safetensors"
    target = tmp_path / "model.safetensors"
    download.save_as(target)
    expected = console.files[3]["model.safetensors"]
    assert hashlib.sha256(target.read_bytes()).hexdigest() == hashlib.sha256(expected).hexdigest()


def test_maintainer_moves_an_alias_to_another_version_and_the_audit_log_says_so(
    console: Console, new_page: Any
) -> None:
    alias = unique("staging").replace("-", "_")
    r = console.owner.put(f"{console.model_path}/aliases/{alias}", json={"version": 1})
    assert r.status_code == 200
    page = new_page(console.maintainer)
    page.goto(f"{console.model_path}/versions/3")
    form = page.locator("form", has=page.locator(f"input[name=alias][value='{alias}']"))
    form.locator("button", has_text="Move here").click()
    # A move asks first, saying where the alias is and where it goes.
    confirm = page.locator("section.confirm").inner_text()
    assert f"{alias} points at v1" in confirm and "will point at v3" in confirm
    assert console.alias_target(alias) == 1
    page.click("#confirm button")
    page.wait_for_url(f"**{console.model_path}/versions/3")
    assert alias in page.locator("h1").inner_text()
    assert console.alias_target(alias) == 3

    # Setting a new alias through the free-text form (nothing to lose: no question), then
    # removing it, which asks first and can be cancelled.
    page.fill("#set-alias input[name=alias]", alias + "_new")
    page.click("#set-alias button")
    page.wait_for_url(f"**{console.model_path}/versions/3")
    assert console.alias_target(alias + "_new") == 3
    remove = page.locator("form", has=page.locator(f"button[value='{alias}_new']"))
    remove.locator("button").click()
    assert f"Remove the alias {alias}_new?" in page.locator("h1").inner_text()
    page.click("text=Cancel")
    page.wait_for_url(f"**{console.model_path}/versions/3")
    assert console.alias_target(alias + "_new") == 3
    page.locator("form", has=page.locator(f"button[value='{alias}_new']")).locator("button").click()
    page.click("#confirm button")
    page.wait_for_url(f"**{console.model_path}/versions/3")
    assert console.alias_target(alias + "_new") is None

    page.click("nav.tabs >> text=Audit log")
    rows = page.locator("table.events tbody tr")
    # Newest first: the removal, the new alias, then the move, in words, not codes.
    assert "Alias removed" in rows.nth(0).inner_text()
    assert "Alias set" in rows.nth(1).inner_text()
    moved = rows.nth(2).inner_text()
    assert "Alias moved" in moved and console.maintainer.username in moved  # type: ignore[attr-defined]
    assert f"{alias} → this version (was v1)" in moved and "resnet v3" in moved
    assert "alias.set" not in page.locator("table.events").inner_text()
    assert "None" not in page.locator("table.events").inner_text()


def test_viewer_gets_no_alias_forms_and_a_post_of_one_is_refused(
    console: Console, new_page: Any
) -> None:
    page = new_page(console.viewer)
    page.goto(f"{console.model_path}/versions/3")
    assert page.locator("form[action$='/aliases']").count() == 0
    assert page.locator("button", has_text="Move here").count() == 0
    assert "Maintainers and owners can set" in page.content()
    # The viewer sends the form anyway, with their own valid CSRF token (every page has it).
    csrf = page.locator("form.logout input[name=csrf]").get_attribute("value")
    response = page.request.post(
        f"{console.model_path}/aliases",
        form={"csrf": csrf, "alias": "production", "version": "3"},
        max_redirects=0,
    )
    assert response.status == 403
    assert "you are a viewer" in response.text()
    assert console.alias_target("production") == 1


def test_owner_adds_a_member_changes_their_role_and_removes_them(
    console: Console, new_page: Any
) -> None:
    newcomer = console.deployment.account("newcomer")
    page = new_page(console.owner)
    page.goto(f"/projects/{console.project}/members")
    page.fill("#add-member input[name=username]", newcomer)
    page.select_option("#add-member select[name=role]", "contributor")
    page.click("#add-member button")
    page.wait_for_url(f"**/projects/{console.project}/members")
    row = page.locator(f"#member-{newcomer}")
    assert row.locator("select[name=role]").input_value() == "contributor"
    assert _role_of(console, newcomer) == "contributor"

    row.locator("select[name=role]").select_option("maintainer")
    row.locator("button", has_text="Change").click()
    page.wait_for_url(f"**/projects/{console.project}/members")
    assert _role_of(console, newcomer) == "maintainer"

    page.locator(f"#member-{newcomer}").locator("button", has_text="Remove").click()
    page.wait_for_url(f"**/projects/{console.project}/members")
    assert page.locator(f"#member-{newcomer}").count() == 0
    assert _role_of(console, newcomer) is None


def test_members_page_of_a_non_owner_has_no_forms(console: Console, new_page: Any) -> None:
    page = new_page(console.maintainer)
    page.goto(f"/projects/{console.project}/members")
    assert page.locator(f"#member-{console.viewer.username}").inner_text().count("viewer") >= 1  # type: ignore[attr-defined]
    assert page.locator("#add-member").count() == 0
    assert page.locator("table.members form").count() == 0


def test_run_chart_draws_each_metric_with_a_marker_at_every_checkpoint(
    console: Console, new_page: Any
) -> None:
    page = new_page(console.viewer)
    # The server's Content-Security-Policy allows only its own scripts and styles: the chart
    # library and run.js must work under it without the browser refusing anything.
    refused: list[str] = []
    page.on("console", lambda m: refused.append(m.text) if "Content Security" in m.text else None)
    response = page.goto(f"/projects/{console.project}/runs/{console.run}")
    assert "script-src 'self';" in response.headers["content-security-policy"]
    page.wait_for_selector("#charts[data-state=drawn]")
    assert refused == []
    charts = page.locator("figure.chart")
    assert charts.count() == 2
    for i in range(2):
        chart = charts.nth(i)
        assert chart.get_attribute("data-markers") == str(len(CHECKPOINT_STEPS))
        pixels = chart.locator("canvas").evaluate(_COUNT_PIXELS)
        # The curve (blue) and the markers (orange) are on the canvas, not just the element.
        assert pixels["line"] > 200, pixels
        assert pixels["marker"] > 100, pixels
        # Each marker is a vertical line: orange pixels in at least as many columns as markers,
        # found where the steps of the checkpoints fall.
        assert pixels["markerColumns"] >= len(CHECKPOINT_STEPS), pixels
    assert "v1 @ step 250" in page.locator("ul.chips").inner_text()


def test_phone_sized_screen_shows_the_versions_without_sideways_scrolling(
    console: Console, new_page: Any
) -> None:
    page = new_page(console.viewer, viewport={"width": 390, "height": 844}, is_mobile=True)
    for path in [console.model_path, f"{console.model_path}/versions/2", "/"]:
        page.goto(path)
        overflow = page.evaluate(
            "document.documentElement.scrollWidth - document.documentElement.clientWidth"
        )
        assert overflow <= 0, (path, overflow)
    page.goto(console.model_path)
    assert page.locator("table.versions tbody tr").first.is_visible()
    assert not page.locator("table.versions th.wide").first.is_visible()  # less on a phone


def test_pages_read_without_javascript_except_the_charts(console: Console, new_page: Any) -> None:
    page = new_page(java_script_enabled=False)
    page.goto("/login")
    page.fill("input[name=username]", console.viewer.username)  # type: ignore[attr-defined]
    page.fill("input[name=password]", console.password(console.viewer))
    page.click("button[type=submit]")
    page.goto(f"{console.model_path}/versions/1")
    assert page.locator("#download-line").is_visible()
    assert not page.locator("button.copy").is_visible()  # needs script: hidden without
    assert page.locator("table.files tbody tr").count() == 2
    page.goto(f"/projects/{console.project}/runs/{console.run}")
    assert "The charts need JavaScript" in page.content()
    assert "loss" in page.locator("table").first.inner_text()


def _role_of(console: Console, username: str) -> str | None:
    r = console.owner.get(f"/projects/{console.project}/members")
    assert r.status_code == 200
    return next((m["role"] for m in r.json() if m["username"] == username), None)


# Counts the canvas's pixels in the line's colour, in the markers' colour, and the columns
# holding a vertical run of marker pixels (a marker line, not the "vN" label).
_COUNT_PIXELS = """canvas => {
  const ctx = canvas.getContext("2d");
  const { width, height } = canvas;
  const data = ctx.getImageData(0, 0, width, height).data;
  const near = (i, r, g, b) =>
    Math.abs(data[i] - r) < 40 && Math.abs(data[i + 1] - g) < 40 &&
    Math.abs(data[i + 2] - b) < 40 && data[i + 3] > 200;
  let line = 0, marker = 0, markerColumns = 0;
  for (let x = 0; x < width; x++) {
    let column = 0;
    for (let y = 0; y < height; y++) {
      const i = (y * width + x) * 4;
      if (near(i, 28, 126, 214)) line++;
      if (near(i, 217, 72, 15)) { marker++; column++; }
    }
    if (column > height / 4) markerColumns++;
  }
  return { line, marker, markerColumns };
}"""


def test_phone_sized_screen_has_no_sideways_scrolling_on_any_page_with_forms(
    console: Console, new_page: Any
) -> None:
    page = new_page(console.owner, viewport={"width": 390, "height": 844}, is_mobile=True)
    base = console.model_path
    paths = [
        "/",
        f"/projects/{console.project}",
        f"/projects/{console.project}/members",
        f"/projects/{console.project}/audit",
        f"/projects/{console.project}/trash",
        f"/projects/{console.project}/runs/{console.run}",
        "/tokens",
        "/search?q=checkpoint",
        f"{base}/versions/3/delete",
        f"{base}/delete",
    ]
    for path in paths:
        page.goto(path)
        if "/runs/" in path:
            page.wait_for_selector("#charts[data-state=drawn]")
        overflow = page.evaluate(
            "document.documentElement.scrollWidth - document.documentElement.clientWidth"
        )
        assert overflow <= 0, (path, overflow)
    # A refused form and its kept values fit too.
    page.goto(f"{base}/versions/2")
    page.fill("#set-alias input[name=alias]", "latest")
    page.click("#set-alias button")
    assert page.locator("#set-alias-error").is_visible()
    overflow = page.evaluate(
        "document.documentElement.scrollWidth - document.documentElement.clientWidth"
    )
    assert overflow <= 0, overflow
