"""The project/model tree of the model history: `ProjectTreeModel` lists the projects the user
can read, each with its models, read from the server off the UI thread (`run_async`). A
project's tooltip says what its blobs take on the server (the listing's size).

Each `refresh` reconciles the tree with the server's answer in place: new projects and models
are inserted where they sort, those deleted elsewhere are removed, and the rest (with the
view's selection and expansion) stay as they are. Refreshes asked for while one is on its way
(a burst of events) make one more, after it.
"""

from __future__ import annotations

from dataclasses import dataclass

from PySide6.QtCore import QModelIndex, QObject, Qt, Signal
from PySide6.QtGui import QStandardItem, QStandardItemModel

import lmvp
from lmvp.history import human_size
from lmvp_desktop.tasks import run_async

# Item data roles beyond Qt's own, numbered on from the version table's.
PROJECT_ROLE = Qt.ItemDataRole.UserRole + 3  # the project's name
MODEL_ROLE = Qt.ItemDataRole.UserRole + 4  # the model's name (None on a project item)


@dataclass(frozen=True)
class ProjectModels:
    """A project and its models, as the tree shows them."""

    project: lmvp.Project
    models: list[lmvp.Model]


def fetch_projects_and_models(client: lmvp.Client) -> list[ProjectModels]:
    """Every project the user can read, with its models. Blocking: call it off the UI thread."""
    return [ProjectModels(p, client.models(p.name)) for p in client.projects()]


class ProjectTreeModel(QStandardItemModel):
    """Projects (top level) and their models (children), loaded in the background by `refresh`.

    Items carry `PROJECT_ROLE` and `MODEL_ROLE` (None on projects). `loaded` is emitted once
    the tree holds the server's answer, `failed(message)` when it could not be read.
    """

    loaded = Signal()
    failed = Signal(str)

    def __init__(self, client: lmvp.Client, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._client = client
        self._roles: dict[str, str] = {}
        self._refreshing = False
        self._refresh_again = False
        self.setHorizontalHeaderLabels(["Projects and models"])

    def refresh(self) -> None:
        """Read projects and models again (in the background) and bring the tree up to date."""
        if self._refreshing:
            self._refresh_again = True
            return
        self._refreshing = True
        run_async(
            fetch_projects_and_models,
            self._client,
            on_done=self._show,
            on_error=self._refresh_failed,
            owner=self,
        )

    def role_of(self, project: str) -> str | None:
        """The user's role in `project` (`viewer` ... `owner`), None if it is not listed."""
        return self._roles.get(project)

    def index_of(self, project: str, model: str | None = None) -> QModelIndex:
        """The index of a project, or of one of its models; invalid if not in the tree."""
        for row in range(self.rowCount()):
            project_item = self.item(row)
            if project_item.data(PROJECT_ROLE) != project:
                continue
            if model is None:
                return project_item.index()
            for child_row in range(project_item.rowCount()):
                child = project_item.child(child_row)
                if child.data(MODEL_ROLE) == model:
                    return child.index()
        return QModelIndex()

    def _refresh_failed(self, exc: BaseException) -> None:
        self._refreshing = False
        self.failed.emit(str(exc))
        self._again()

    def _again(self) -> None:
        if self._refresh_again:
            self._refresh_again = False
            self.refresh()

    def _show(self, projects: list[ProjectModels]) -> None:
        self._refreshing = False
        self._roles = {entry.project.name: entry.project.role for entry in projects}
        wanted = {entry.project.name: entry for entry in projects}
        for row in reversed(range(self.rowCount())):  # projects gone (deleted, or no access)
            if self.item(row).data(PROJECT_ROLE) not in wanted:
                self.removeRow(row)
        for entry in sorted(projects, key=lambda e: e.project.name):
            item = self._project_item(entry.project.name)
            if item is None:
                item = QStandardItem(entry.project.name)
                item.setEditable(False)
                item.setSelectable(False)
                item.setData(entry.project.name, PROJECT_ROLE)
                item.setData(None, MODEL_ROLE)
                self.insertRow(_sorted_row(self, None, entry.project.name), [item])
            size = entry.project.size
            stored = f"\nstored: {human_size(size)} ({size:,} bytes)" if size is not None else ""
            item.setToolTip(
                f"{entry.project.description}\nyour role: {entry.project.role}{stored}".strip()
            )
            _reconcile_models(item, entry)
        self.loaded.emit()
        self._again()

    def _project_item(self, project: str) -> QStandardItem | None:
        for row in range(self.rowCount()):
            if self.item(row).data(PROJECT_ROLE) == project:
                return self.item(row)
        return None


def _reconcile_models(item: QStandardItem, entry: ProjectModels) -> None:
    """Make the children of a project's `item` the project's models, in name order."""
    models = {m.name: m for m in entry.models}
    for row in reversed(range(item.rowCount())):
        if item.child(row).data(MODEL_ROLE) not in models:
            item.removeRow(row)
    present = {item.child(row).data(MODEL_ROLE): item.child(row) for row in range(item.rowCount())}
    for m in sorted(entry.models, key=lambda m: m.name):
        child = present.get(m.name)
        if child is None:
            child = QStandardItem(m.name)
            child.setEditable(False)
            child.setData(entry.project.name, PROJECT_ROLE)
            child.setData(m.name, MODEL_ROLE)
            item.insertRow(_sorted_row(None, item, m.name), [child])
        latest = f"latest: v{m.latest_version}" if m.latest_version else "no versions"
        child.setToolTip(f"{m.description}\n{latest}".strip())


def _sorted_row(model: QStandardItemModel | None, parent: QStandardItem | None, name: str) -> int:
    """The row where `name` goes among the (sorted) top-level items or `parent`'s children."""
    if parent is not None:
        names = [parent.child(r).text() for r in range(parent.rowCount())]
    else:
        assert model is not None
        names = [model.item(r).text() for r in range(model.rowCount())]
    return next((r for r, n in enumerate(names) if n > name), len(names))


__all__ = [
    "MODEL_ROLE",
    "PROJECT_ROLE",
    "ProjectModels",
    "ProjectTreeModel",
    "fetch_projects_and_models",
]
