"""From an empty server to a team with a synced, pushed, aliased and deleted version without a
command line (issue 18's done-when for the desktop): the real `lmvp-desktop` on Xvfb, first
start in an empty home, operated and read only through the accessibility tree (AT-SPI), as a
screen reader's user would: "Start a local server" in the login dialog; the first-start guide
makes a project, a model and a watched folder; Project → Members… invites a teammate as
contributor; a checkpoint the training job writes there becomes a version in the table;
Project → Personal API tokens… creates a token, read off the dialog, which `lmvp push` uses
from a shell of its own; an alias is set after a question; a version is deleted after a
question that says what goes. (The teammate's account is made through the server's API first:
an admin's job, not this person's.)"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import requests

from tests.desktop.xdesktop import Node, XDesktop, main_window, table_rows, version_table

BIN = Path(sys.executable).parent


def _dialog(tree: Node, title: str) -> Node | None:
    for node in tree.walk():
        if node.role in ("dialog", "frame", "alert") and node.name == title and node.showing:
            return node
    return None


def _teammate_account(url: str, admin_password: str, username: str) -> None:
    """An account for a teammate, made by the server's admin through its API (set-up)."""
    api = f"{url}/api/v1"
    login = requests.post(
        f"{api}/auth/login", json={"username": "admin", "password": admin_password}, timeout=30
    )
    assert login.status_code == 200, login.text
    created = requests.post(
        f"{api}/users",
        json={"username": username, "password": f"{username}-password-1"},
        headers={"Authorization": f"Bearer {login.json()['token']}"},
        timeout=30,
    )
    assert created.status_code == 201, created.text


def test_an_empty_server_to_a_team_and_versions_synced_pushed_aliased_and_deleted_on_screen(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "training-run"
    folder.mkdir()
    with XDesktop() as desktop:
        app = desktop.start_app(demo=False)
        started = time.monotonic()

        def pressed(role: str, name: str, what: str) -> None:
            # Pressed as soon as it shows (asking AT-SPI for it alone is quicker than reading
            # the whole tree); the screen is read only to say what showed instead.
            deadline = time.monotonic() + 30
            while not desktop.press(role, name):
                if time.monotonic() > deadline or app.proc.poll() is not None:
                    desktop.wait_for(
                        lambda t: t.find(role=role, name=f"^{name}$"), timeout=0, app=app, what=what
                    )
                    raise AssertionError(f"could not press {name!r}\n{app.output()}")
                time.sleep(0.2)

        # First start: the login dialog; this person has no server, so starts one here.
        pressed("push button", "Start a local server", "the login dialog")
        # The server has no project: the guide opens by itself.
        desktop.wait_for(
            lambda t: _dialog(t, "Get started with LMVP"), timeout=60, app=app, what="the guide"
        )
        assert desktop.set_text("Project name", "vision")
        assert desktop.set_text("Model name", "resnet")
        assert desktop.set_text("Folder to watch", str(folder))
        pressed("push button", "Create and watch", "the guide's button")
        desktop.wait_for(
            lambda t: main_window(t) and not _dialog(t, "Get started with LMVP"),
            timeout=30,
            app=app,
            what="the guide closed on the main window",
        )

        # A teammate joins as contributor (the role the dialog offers): Project → Members…,
        # their name, Add.
        _teammate_account(app.url, app.admin_password_file.read_text().strip(), "mara")
        pressed("menu item", "Project", "the Project menu")
        pressed("menu item", "Members …", "Project → Members…")
        desktop.wait_for(
            lambda t: _dialog(t, "Members of vision"), timeout=15, app=app, what="the members"
        )
        assert desktop.set_text("Username to add", "mara")
        pressed("push button", "Add or change", "the members' Add")
        desktop.wait_for(
            lambda t: (
                (dialog := _dialog(t, "Members of vision"))
                and (table := dialog.find(role="table", name="^Members$"))
                and ["mara", "contributor"] in table_rows(table)
            ),
            timeout=15,
            app=app,
            what="mara listed as a contributor",
        )
        pressed("push button", "Close", "the members' Close")

        # The training job saves a checkpoint into the watched folder.
        (folder / "model_step_100.pt").write_bytes(b"weights" * 1000)
        rows = desktop.wait_for(
            lambda t: (table := version_table(t)) and table_rows(table),
            timeout=60,
            app=app,
            what="the checkpoint as a version in the table",
        )
        assert rows[0][0] == "1" and rows[0][6] == "100"  # v1, step 100

        # A token for a script: Project → Personal API tokens…, Create; shown once, copied.
        pressed("menu item", "Project", "the Project menu")
        pressed("menu item", "Personal API tokens …", "Project → Personal API tokens…")
        desktop.wait_for(
            lambda t: _dialog(t, "Personal API tokens"), timeout=15, app=app, what="the tokens"
        )
        assert desktop.set_text("Token name", "ci")
        pressed("push button", "Create token", "Create token")
        desktop.wait_for(
            lambda t: t.find(role="label", name=r"^The new write token .* shown only once"),
            timeout=15,
            app=app,
            what="the new token, shown once",
        )
        token = desktop.text("New token")
        assert token, f"no token in the dialog\n{app.output()}"
        pressed("push button", "Close", "the tokens' Close")
        weights = tmp_path / "finetuned.bin"
        weights.write_bytes(os.urandom(4096))
        env = {k: v for k, v in os.environ.items() if not k.startswith("LMVP_")}
        env.update(
            LMVP_SERVER=app.url,
            LMVP_TOKEN=token,
            HOME=str(tmp_path),
            XDG_CONFIG_HOME=str(tmp_path / "config"),
            XDG_CACHE_HOME=str(tmp_path / "cache"),
        )
        pushed = subprocess.run(
            [str(BIN / "lmvp"), "push", str(weights), "vision/resnet", "-m", "pushed by ci"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert pushed.returncode == 0, pushed.stderr
        rows = desktop.wait_for(
            lambda t: (table := version_table(t)) and len(rows := table_rows(table)) == 2 and rows,
            timeout=30,
            app=app,
            what="the pushed version in the table",
        )
        assert (rows[0][0], rows[0][2], rows[0][3]) == ("2", "admin", "pushed by ci")
        assert rows[1][0] == "1"

        # The synced checkpoint, v1 (the second row, newest first), gets an alias and goes.
        assert desktop.select_row("Versions", 1)
        pressed("push button", "Set alias…", "Set alias")
        desktop.wait_for(lambda t: _dialog(t, "Set alias"), timeout=15, app=app, what="alias box")
        assert desktop.set_text("Alias", "best")
        pressed("push button", "OK", "the alias box's OK")
        question = desktop.wait_for(
            lambda t: t.find(name=r"^Point the new alias 'best' at v1 of vision/resnet\?$"),
            timeout=15,
            app=app,
            what="the question before setting the alias",
        )
        assert question is not None
        pressed("push button", "Set alias", "the question's Set alias")
        desktop.wait_for(
            lambda t: (table := version_table(t)) and table_rows(table)[1][5] == "best",
            timeout=15,
            app=app,
            what="the alias in the table",
        )

        pressed("push button", "Delete version…", "Delete version")
        desktop.wait_for(
            lambda t: t.find(name=r"^Delete v1 of vision/resnet\? Its 1 file .* alias best go too"),
            timeout=15,
            app=app,
            what="the question saying what goes",
        )
        pressed("push button", "Delete", "the question's Delete")
        desktop.wait_for(
            lambda t: (
                (table := version_table(t)) is not None
                and [r[0] for r in table_rows(table)] == ["2"]
            ),
            timeout=15,
            app=app,
            what="v1 gone from the table",
        )
        took = time.monotonic() - started
        assert app.stop() == 0
    assert took < 150
