"""From an empty server to a synced, aliased and deleted version without a command line (issue
18's done-when for the desktop): the real `lmvp-desktop` on Xvfb, first start in an empty
home, operated and read only through the accessibility tree (AT-SPI), as a screen reader's
user would: "Start a local server" in the login dialog; the first-start guide makes a
project, a model and a watched folder; a checkpoint the training job writes there becomes a
version in the table; an alias is set after a question; the version is deleted after a
question that says what goes."""

from __future__ import annotations

import time
from pathlib import Path

from tests.desktop.xdesktop import Node, XDesktop, main_window, table_rows, version_table


def _dialog(tree: Node, title: str) -> Node | None:
    for node in tree.walk():
        if node.role in ("dialog", "frame", "alert") and node.name == title and node.showing:
            return node
    return None


def test_an_empty_server_to_a_version_aliased_and_deleted_through_the_screen(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "training-run"
    folder.mkdir()
    with XDesktop() as desktop:
        app = desktop.start_app(demo=False)
        started = time.monotonic()

        def pressed(role: str, name: str, what: str) -> None:
            desktop.wait_for(
                lambda t: t.find(role=role, name=f"^{name}$"), timeout=30, app=app, what=what
            )
            deadline = time.monotonic() + 10
            while not desktop.press(role, name):
                assert time.monotonic() < deadline, f"could not press {name!r}\n{app.output()}"
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

        # The training job saves a checkpoint into the watched folder.
        (folder / "model_step_100.pt").write_bytes(b"weights" * 1000)
        rows = desktop.wait_for(
            lambda t: (table := version_table(t)) and table_rows(table),
            timeout=60,
            app=app,
            what="the checkpoint as a version in the table",
        )
        assert rows[0][0] == "1" and rows[0][6] == "100"  # v1, step 100

        assert desktop.select_row("Versions", 0)
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
            lambda t: (table := version_table(t)) and table_rows(table)[0][5] == "best",
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
            lambda t: (table := version_table(t)) is not None and not table_rows(table),
            timeout=15,
            app=app,
            what="the version gone from the table",
        )
        took = time.monotonic() - started
        assert app.stop() == 0
    assert took < 150
