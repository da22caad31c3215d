"""The Done-when of issue 18 for the web console: in Chromium, a fresh server goes from empty to
a project, a model, a teammate invited as contributor, a token created and used by `lmvp push`
(the real CLI, a subprocess), versions committed, an alias set and moved with confirmation, and
a version deleted with confirmation, with no command line for any step in the browser.

The server is the test's own (an empty database but for the admin who creates the accounts:
the console has no sign-up, as accounts are a server admin's)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ADMIN_PASSWORD
from tests.support import Api, Deployment, ServerProcess

LMVP = Path(sys.executable).parent / "lmvp"


@pytest.fixture
def empty_server(make_server: Callable[[str], ServerProcess]) -> Iterator[Deployment]:
    server = make_server("sqlite")
    server.start()
    yield Deployment(server=server, admin=Api(server.url).login("admin", ADMIN_PASSWORD))
    server.stop()


def lmvp_push(
    tmp_path: Path, server: str, token: str, folder: Path, ref: str, message: str
) -> subprocess.CompletedProcess[str]:
    """`lmvp push` as a person would run it with a token from the console (no keyring)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LMVP_")}
    env.update(
        LMVP_CONFIG_DIR=str(tmp_path / "config"),
        LMVP_CACHE_DIR=str(tmp_path / "cache"),
        PYTHON_KEYRING_BACKEND="keyring.backends.fail.Keyring",
        LMVP_SERVER=server,
        LMVP_TOKEN=token,
    )
    return subprocess.run(
        [str(LMVP), "push", str(folder), ref, "-m", message],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


def test_a_fresh_server_goes_from_empty_to_a_team_with_versions_in_the_browser_alone(
    empty_server: Deployment, browser: Any, tmp_path: Path
) -> None:
    d = empty_server
    me = d.account("alice")
    teammate = d.account("bob")
    context = browser.new_context(base_url=d.url)
    context.set_default_timeout(10_000)
    try:
        page = context.new_page()
        page.goto("/login")
        page.fill("input[name=username]", me)
        page.fill("input[name=password]", "password-" + me)
        page.click("button[type=submit]")
        page.wait_for_url(d.url + "/")

        # Empty: the page leads to creating a first project, not to a command line.
        empty = page.locator("main").inner_text()
        assert "Create your first project" in empty
        assert "lmvp projects create" not in empty
        page.fill("#create-project input[name=name]", "vision")
        page.fill("#create-project input[name=description]", "image models")
        page.click("#create-project button")
        page.wait_for_url("**/projects/vision")
        assert "you are owner" in page.locator("nav.tabs").inner_text()

        page.fill("#create-model input[name=name]", "resnet")
        page.click("#create-model button")
        page.wait_for_url("**/projects/vision/models/resnet")
        assert "No versions yet" in page.content()

        page.click("nav.tabs >> text=Members")
        page.fill("#add-member input[name=username]", teammate)
        page.select_option("#add-member select[name=role]", "contributor")
        page.click("#add-member button")
        page.wait_for_url("**/projects/vision/members")
        row = page.locator(f"#member-{teammate}")
        assert row.locator("select[name=role]").input_value() == "contributor"

        page.click("a.who")  # your name: your tokens
        page.wait_for_url("**/tokens")
        page.fill("#create-token input[name=name]", "laptop")
        page.select_option("#create-token select[name=scope]", "write")
        page.select_option("#create-token select[name=expires_in_days]", "30")
        page.click("#create-token button")
        shown = page.locator("#new-token").inner_text()
        assert "shown only this once" in shown and "read and write" in shown
        assert "expires on" in shown
        secret = page.locator("#token-secret").inner_text().strip()
        # Once: the list afterwards shows only its first characters.
        page.goto("/tokens")
        assert secret not in page.content()
        assert page.locator("table.tokens", has_text="laptop").count() == 1

        for step in (1, 2):
            folder = tmp_path / f"checkpoint-{step}"
            folder.mkdir()
            (folder / "model.safetensors").write_bytes(bytes([step]) * 4096)
            pushed = lmvp_push(tmp_path, d.url, secret, folder, "vision/resnet", f"step {step}")
            assert pushed.returncode == 0, pushed.stderr

        page.goto("/projects/vision/models/resnet")
        rows = page.locator("table.versions tbody tr")
        assert rows.count() == 2
        assert "step 2" in rows.nth(0).inner_text() and me in rows.nth(0).inner_text()

        # An alias on v1, then moved to v2: the move asks first and says what changes.
        page.click("table.versions >> text=v1")
        page.wait_for_url("**/versions/1")
        page.fill("#set-alias input[name=alias]", "production")
        page.click("#set-alias button")
        page.wait_for_url("**/versions/1")
        assert "production" in page.locator("h1").inner_text()
        page.goto("/projects/vision/models/resnet/versions/2")
        form = page.locator("form", has=page.locator("input[name=alias][value='production']"))
        form.locator("button", has_text="Move here").click()
        confirm = page.locator("section.confirm").inner_text()
        assert "production points at v1" in confirm and "will point at v2" in confirm
        assert _alias_target(d, me, "production") == 1  # nothing changed before the yes
        page.click("#confirm button")
        page.wait_for_url("**/versions/2")
        assert "production" in page.locator("h1").inner_text()
        assert _alias_target(d, me, "production") == 2

        # Deleting v1 says what goes, then deletes it.
        page.goto("/projects/vision/models/resnet/versions/1")
        page.click("#delete-version")
        confirm = page.locator("section.confirm").inner_text()
        assert "v1 of vision/resnet (1 file, 4.0 KiB) will be deleted" in confirm
        page.click("text=Cancel")
        page.wait_for_url("**/versions/1")  # cancel keeps it
        page.click("#delete-version")
        page.click("#confirm button")
        page.wait_for_url("**/projects/vision/models/resnet")
        rows = page.locator("table.versions tbody tr")
        assert rows.count() == 1 and "v2" in rows.nth(0).inner_text()
        api = d.admin.login(me, "password-" + me)
        assert api.get("/projects/vision/models/resnet/versions/1").status_code == 404

        # The teammate sees the project as a contributor: no deleting, no alias forms.
        theirs = browser.new_context(base_url=d.url)
        try:
            other = theirs.new_page()
            other.goto("/login")
            other.fill("input[name=username]", teammate)
            other.fill("input[name=password]", "password-" + teammate)
            other.click("button[type=submit]")
            other.wait_for_url(d.url + "/")
            assert "contributor" in other.locator("table", has_text="vision").inner_text()
            other.goto("/projects/vision/models/resnet/versions/2")
            assert other.locator("#delete-version").count() == 0
            assert other.locator("#set-alias").count() == 0
        finally:
            theirs.close()

        page.click("nav.tabs >> text=Audit log")
        log = page.locator("table.events").inner_text()
        for said in ("Version deleted", "Alias moved", "Version committed", "Member added"):
            assert said in log
        assert f"{teammate} as contributor" in log
    finally:
        context.close()


def _alias_target(d: Deployment, user: str, alias: str) -> int | None:
    api = d.admin.login(user, "password-" + user)
    r = api.get("/projects/vision/models/resnet/aliases")
    assert r.status_code == 200, r.text
    return next((a["version"] for a in r.json() if a["name"] == alias), None)
