"""Reads the accessibility tree (AT-SPI) as a screen reader does, for the Xvfb tests.

    /usr/bin/python3 tests/desktop/atspi_dump.py

Run by Debian's python3 (pyatspi comes from the python3-pyatspi package, not from PyPI) on the
session bus of DBUS_SESSION_BUS_ADDRESS. For each line read on stdin (an application name, or
empty for every application) it writes one JSON line: the applications of that name, each a
tree of {role, name, showing, extents, rows, columns, children}. `rows`/`columns` are given for
tables, `extents` (x, y, width, height on the screen) for what is showing.

A line `shallow APP` answers the same without the cells of tables (their `rows` and
`columns` say how many there are): a fast reading, for timing. A line
`select APP TABLE ROW` selects row ROW of the table named TABLE, as a screen reader's user
does (AT-SPI's Table.addRowSelection), and answers {"selected": true|false}.

`press APP ROLE NAME` does the first action (a button's press) of the first showing object
with that role and exact name; `settext APP NAME TEXT` sets the text of the first showing
editable text named NAME (AT-SPI's EditableText), as a person typing it; both answer
{"done": true|false}. `gettext APP NAME` answers {"text": ...}, the text of the first showing
text field named NAME (AT-SPI's Text, what a screen reader reads out), or null.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import pyatspi  # type: ignore[import-not-found]


def node(acc: Any, depth: int = 0, shallow: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {"role": acc.getRoleName(), "name": acc.name or ""}
    try:
        showing = acc.getState().contains(pyatspi.STATE_SHOWING)
    except Exception:
        showing = False
    out["showing"] = showing
    if showing:
        try:
            box = acc.queryComponent().getExtents(pyatspi.DESKTOP_COORDS)
            out["extents"] = [box.x, box.y, box.width, box.height]
        except Exception:
            pass
    if out["role"] == "table":
        try:
            table = acc.queryTable()
            out["rows"], out["columns"] = table.nRows, table.nColumns
        except Exception:
            pass
    children = []
    if depth < 40 and not (shallow and out["role"] == "table"):
        for i in range(acc.childCount):
            try:
                child = acc.getChildAtIndex(i)
            except Exception:
                continue
            if child is not None:
                children.append(node(child, depth + 1, shallow))
    if children:
        out["children"] = children
    return out


def select(desktop: Any, app_name: str, table_name: str, row: int) -> bool:
    for i in range(desktop.childCount):
        app = desktop.getChildAtIndex(i)
        if app is None or app.name != app_name:
            continue
        table = pyatspi.findDescendant(
            app, lambda a: a.getRoleName() == "table" and a.name == table_name
        )
        if table is not None:
            return bool(table.queryTable().addRowSelection(row))
    return False


def _showing(app_name: str, desktop: Any, match: Any) -> Any:
    for i in range(desktop.childCount):
        app = desktop.getChildAtIndex(i)
        if app is None or app.name != app_name:
            continue

        def wanted(a: Any) -> bool:
            try:
                return bool(match(a)) and a.getState().contains(pyatspi.STATE_SHOWING)
            except Exception:
                return False

        found = pyatspi.findDescendant(app, wanted)
        if found is not None:
            return found
    return None


def press(desktop: Any, app_name: str, role: str, name: str) -> bool:
    acc = _showing(app_name, desktop, lambda a: a.getRoleName() == role and a.name == name)
    if acc is None:
        return False
    action = acc.queryAction()
    return bool(action.doAction(0))


def set_text(desktop: Any, app_name: str, name: str, text: str) -> bool:
    acc = _showing(
        app_name,
        desktop,
        lambda a: a.name == name and a.getRoleName() in ("text", "entry", "password text"),
    )
    if acc is None:
        return False
    return bool(acc.queryEditableText().setTextContents(text))


def get_text(desktop: Any, app_name: str, name: str) -> str | None:
    acc = _showing(
        app_name,
        desktop,
        lambda a: a.name == name and a.getRoleName() in ("text", "entry", "password text"),
    )
    if acc is None:
        return None
    return str(acc.queryText().getText(0, -1))


def main() -> int:
    desktop = pyatspi.Registry.getDesktop(0)
    for line in sys.stdin:
        if line.startswith("gettext "):
            try:
                _, app_name, name = line.rstrip("\n").split(" ", 2)
                text = get_text(desktop, app_name, name.replace("_", " "))
            except Exception:
                text = None
            sys.stdout.write(json.dumps({"text": text}) + "\n")
            sys.stdout.flush()
            continue
        if line.startswith(("press ", "settext ")):
            try:
                if line.startswith("press "):
                    _, app_name, role, name = line.rstrip("\n").split(" ", 3)
                    done = press(desktop, app_name, role.replace("_", " "), name)
                else:
                    _, app_name, name, text = line.rstrip("\n").split(" ", 3)
                    done = set_text(desktop, app_name, name.replace("_", " "), text)
            except Exception:
                done = False
            sys.stdout.write(json.dumps({"done": done}) + "\n")
            sys.stdout.flush()
            continue
        if line.startswith("select "):
            _, app_name, table_name, row = line.rstrip("\n").split(" ", 3)
            sys.stdout.write(
                json.dumps({"selected": select(desktop, app_name, table_name, int(row))}) + "\n"
            )
            sys.stdout.flush()
            continue
        wanted = line.strip()
        shallow = wanted.startswith("shallow ")
        wanted = wanted.removeprefix("shallow ")
        apps = []
        try:
            for i in range(desktop.childCount):
                app = desktop.getChildAtIndex(i)
                if app is not None and (not wanted or app.name == wanted):
                    apps.append(node(app, shallow=shallow))
            reply: dict[str, Any] = {"apps": apps}
        except Exception as exc:
            reply = {"apps": [], "error": f"{type(exc).__name__}: {exc}"}
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
