"""The desktop app as a person meets it (issue 14): the real `lmvp-desktop --demo` process on
an X display (Xvfb, 1366x768) with the xcb platform a real desktop uses, read through the
accessibility tree (AT-SPI), as a screen reader reads it, never through the app's Python
objects. One app session is shared by the module's tests, in order: the window opens, then
every pane tells the truth while the demo trains, then a teammate publishes, and last the demo's
training job is stopped and the plot says its run finished.

A machine without an xcb library fails the first test with the app's own message naming the
library and its apt package (lmvp_desktop.platform_check), not with Qt's generic abort.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from tests.desktop.xdesktop import (
    App,
    Node,
    XDesktop,
    count_label,
    main_window,
    table_rows,
    tree_items,
    version_table,
)

BIN = Path(sys.executable).parent

# The roles of controls a person operates: each must have a name a screen reader can say.
CONTROL_ROLES = {
    "push button",
    "check box",
    "combo box",
    "table",
    "list",
    "tree",
    "slider",
    "page tab",
    "radio button",
    "spin button",
    "progress bar",
}


@dataclass
class Session:
    desktop: XDesktop
    app: App
    notifications: Path


@pytest.fixture(scope="module")
def session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Session]:
    notes = tmp_path_factory.mktemp("notifications") / "notify.jsonl"
    notes.touch()
    with XDesktop(notifications=notes) as desktop:
        app = desktop.start_app()
        yield Session(desktop, app, notes)
        app.stop()


def _truthful_table(tree: Node) -> tuple[int, list[list[str]]] | None:
    """The count under the table and the table's rows, when they agree (and are not 0)."""
    counted, table = count_label(tree), version_table(tree)
    if counted is None or table is None:
        return None
    rows = table_rows(table)
    if counted[0] != len(rows) or table.rows != len(rows) or not rows:
        return None
    return counted[0], rows


def test_a_window_titled_lmvp_shows_within_10_s(session: Session) -> None:
    left = 10 - (time.monotonic() - session.app.started)
    window = session.desktop.wait_for(
        main_window, timeout=max(left, 0.1), app=session.app, what="a window titled LMVP"
    )
    assert window.name.startswith("LMVP")


def test_tree_table_and_plot_tell_the_truth_while_the_demo_trains(session: Session) -> None:
    desktop, app = session.desktop, session.app
    left = 30 - (time.monotonic() - app.started)
    desktop.wait_for(
        lambda t: {"demo", "tiny-net"} <= set(tree_items(t)),
        timeout=max(left, 0.1),
        app=app,
        what="the tree listing the demo project and its model",
    )
    first, rows = desktop.wait_for(
        _truthful_table, timeout=max(left, 0.1), app=app, what="a count equal to the rows"
    )
    desktop.wait_for(
        lambda t: (
            t.find(role="label", name=r"^demo/tiny-net: 1 run; running: demo-run$")
            and t.find(role="list item", name=r"^demo-run \(running\)$")
        ),
        timeout=max(30 - (time.monotonic() - app.started), 0.1),
        app=app,
        what="the plot naming the running run",
    )
    tree = desktop.tree()
    assert tree is not None
    assert not tree.find(name="has no runs yet")
    # The retention and storage lines, the sync state in the status bar and the run's
    # parameters read out what they show, not a fixed name.
    assert tree.find(role="label", name=r"^No retention policy: every version is kept\.$")
    assert tree.find(role="label", name=r"^Storage: the project demo holds ")
    [status_bar] = tree.find_all(role="status bar")
    assert status_bar.find(role="label", name=r"^(Up to date|Syncing checkpoints \.\.\.)$")
    assert not tree.find(role="label", name=r"^(Sync state|Run parameters)$")
    assert tree.find(role="label", name=r"^demo-run: ")
    # The main window fits the 1366x768 screen it opened on.
    window = tree.find(role="frame", name=r"^LMVP - http")
    assert window is not None and window.showing and window.extents is not None
    x, y, width, height = window.extents
    assert x >= 0 and y >= 0 and x + width <= 1366 and y + height <= 768

    # Newest first, a step and the loss on every row, the time to the minute.
    header = [n.name for n in version_table(tree).children if n.role == "table column header"]  # type: ignore[union-attr]
    assert header[:7] == ["Version", "Created", "Author", "Message", "Size", "Aliases", "Step"]
    assert {"loss", "accuracy", "lr"} <= set(header[7:])
    numbers = [int(r[0]) for r in rows]
    assert numbers == sorted(numbers, reverse=True)
    assert all(r[6].isdigit() and r[header.index("loss")] for r in rows)
    assert all(r[1] == "just now" or r[1].endswith("min ago") for r in rows)

    # The step and key metrics are visible without scrolling on this 1366x768 screen.
    table = version_table(tree)
    assert table is not None and table.extents is not None
    tx, _, tw, _ = table.extents
    for node in table.children:
        if node.role == "table column header" and node.name in ("Step", "loss", "accuracy", "lr"):
            assert node.showing and node.extents is not None, node.name
            x, _, w, _ = node.extents
            assert tx <= x and x + w <= tx + tw, f"column {node.name} is off-screen"

    # It grows as checkpoints sync, and the count follows the rows.
    grown, _ = desktop.wait_for(
        lambda t: (found := _truthful_table(t)) and found[0] > first and found,
        timeout=30,
        app=app,
        what=f"more than {first} versions, counted as they come",
    )
    assert grown > first


def test_no_get_started_guide_covers_the_demo(session: Session) -> None:
    # The guide is for a server where this person is in no project; the demo makes its own
    # project (after the window's first look at the tree, which found none), so a guide
    # saying "You are in no project on this server yet" over its versions is wrong.
    desktop, app = session.desktop, session.app
    desktop.wait_for(_truthful_table, timeout=30, app=app, what="the demo's versions")
    time.sleep(1)  # a guide opened late (the tree's first answer arrives any time) shows too
    tree = desktop.tree(shallow=True)
    assert tree is not None
    guides = [
        n
        for n in tree.walk()
        if n.showing
        and (n.name.startswith("Get started") or n.name.startswith("You are in no project"))
        and n.role != "push button"
    ]
    assert guides == [], f"a guide over the demo:\n{tree.outline()[-4000:]}"


def test_every_control_has_an_accessible_name(session: Session) -> None:
    tree = session.desktop.wait_for(main_window, timeout=30, app=session.app)
    unnamed = [
        n.role for n in tree.walk() if n.showing and n.role in CONTROL_ROLES and not n.name.strip()
    ]
    assert unnamed == [], f"controls without an accessible name:\n{tree.outline()[-4000:]}"


def test_a_teammates_version_appears_in_the_table_and_is_notified(
    session: Session, tmp_path: Path
) -> None:
    desktop, app = session.desktop, session.app
    desktop.wait_for(lambda t: {"demo"} <= set(tree_items(t)), timeout=30, app=app)
    # The demo's admin makes a teammate a maintainer of the demo project.
    api = f"{app.url}/api/v1"
    password = app.admin_password_file.read_text().strip()
    admin = requests.post(
        f"{api}/auth/login", json={"username": "admin", "password": password}, timeout=30
    )
    assert admin.status_code == 200, admin.text
    headers = {"Authorization": f"Bearer {admin.json()['token']}"}
    created = requests.post(
        f"{api}/users", json={"username": "mara", "password": "mara-password-1"}, headers=headers
    )
    assert created.status_code == 201, created.text
    member = requests.put(
        f"{api}/projects/demo/members/mara", json={"role": "maintainer"}, headers=headers
    )
    assert member.status_code == 200, member.text
    login = requests.post(
        f"{api}/auth/login", json={"username": "mara", "password": "mara-password-1"}, timeout=30
    )
    token = login.json()["token"]

    # Mara publishes from her own process, with the CLI.
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
    message = "fine-tuned on set B by mara"
    pushed = subprocess.run(
        [str(BIN / "lmvp"), "push", str(weights), "demo/tiny-net", "-m", message, "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert pushed.returncode == 0, pushed.stderr
    published = time.monotonic()

    row = desktop.wait_for(
        lambda t: (
            (table := version_table(t))
            and next((r for r in table_rows(table) if r[3] == message), None)
        ),
        timeout=15,
        app=app,
        what="mara's version in the table",
    )
    assert row[2] == "mara"
    desktop.wait_for(
        lambda t: _truthful_table(t), timeout=15, app=app, what="the count including it"
    )

    def mara_notified() -> dict[str, object] | None:
        for line in session.notifications.read_text().splitlines():
            note = json.loads(line)
            if "mara" in f"{note['summary']} {note['body']}":
                return note  # type: ignore[no-any-return]
        return None

    deadline = published + 20
    while (note := mara_notified()) is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert note is not None, (
        "no notification of mara's version reached the notification server; it got:\n"
        + session.notifications.read_text()
        + app.output()
    )
    assert note["app_name"] == "LMVP"
    assert note["signature"] == "susssasa{sv}i"


def _children(pid: int) -> Iterator[tuple[int, str]]:
    """The processes descended from `pid`, with their command lines (read from /proc)."""
    parents: dict[int, int] = {}
    commands: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            command = (entry / "cmdline").read_bytes()
        except OSError:  # exited meanwhile
            continue
        # pid (comm) state ppid ...: comm may hold spaces and parentheses.
        parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
        commands[int(entry.name)] = command.replace(b"\0", b" ").decode(errors="replace")
    for child, parent in parents.items():
        ancestor = parent
        while ancestor > 1 and ancestor != pid:
            ancestor = parents.get(ancestor, 0)
        if ancestor == pid:
            yield child, commands[child]


def test_the_run_is_marked_finished_when_the_demo_job_stops(session: Session) -> None:
    # Last in the module: it ends the demo's training.
    desktop, app = session.desktop, session.app
    desktop.wait_for(
        lambda t: t.find(role="label", name=r"^demo/tiny-net: 1 run; running: demo-run$"),
        timeout=30,
        app=app,
        what="the plot naming the running run",
    )
    jobs = [pid for pid, command in _children(app.proc.pid) if "lmvp_desktop.demo_job" in command]
    assert len(jobs) == 1, f"the demo's training job among the app's processes: {jobs}"
    os.kill(jobs[0], signal.SIGTERM)  # as a job ends: stopped, not crashed
    desktop.wait_for(
        lambda t: (
            t.find(role="label", name=r"^demo/tiny-net: 1 run; finished: demo-run$")
            and t.find(role="list item", name=r"^demo-run \(finished\)$")
        ),
        timeout=15,
        app=app,
        what="the plot saying the demo's run finished",
    )
