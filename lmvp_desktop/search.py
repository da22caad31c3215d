"""One search box for projects, models and versions (issue 18).

`search_server(client, text)` reads what the user can see (blocking: run it off the UI thread)
and keeps what contains every word typed, case-insensitively: projects and models by name and
description, versions by message, aliases, author and metadata (the newest `VERSIONS_PER_MODEL`
of each model). `SearchBox` is the line edit with the results listed under it as they come
(300 ms after the last key); choosing a result emits `model_chosen(project, model)` or
`version_chosen(project, model, number)`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from PySide6.QtCore import Qt, QTimer, Signal
from PySide6.QtWidgets import QLabel, QLineEdit, QListWidget, QListWidgetItem, QVBoxLayout, QWidget

import lmvp
from lmvp_desktop.errors import explain
from lmvp_desktop.tasks import Task, run_async

VERSIONS_PER_MODEL = 500
MOST_RESULTS = 50


@dataclass(frozen=True)
class SearchHit:
    """One result: a project (model and version None), a model, or a version."""

    project: str
    model: str | None = None
    version: int | None = None
    text: str = ""

    @property
    def label(self) -> str:
        if self.model is None:
            return f"project {self.project}"
        if self.version is None:
            return f"model {self.project}/{self.model}"
        return f"{self.project}/{self.model} v{self.version}: {self.text}"


def _matches(words: list[str], *texts: str) -> bool:
    haystack = " ".join(texts).casefold()
    return all(word in haystack for word in words)


def search_server(client: lmvp.Client, text: str, most: int = MOST_RESULTS) -> list[SearchHit]:
    """Projects, models and versions containing every word of `text` (at most `most`)."""
    words = text.casefold().split()
    if not words:
        return []
    hits: list[SearchHit] = []
    for project in client.projects():
        if _matches(words, project.name, project.description):
            hits.append(SearchHit(project.name))
        for model in client.models(project.name):
            ref = f"{project.name}/{model.name}"
            if _matches(words, ref, model.description):
                hits.append(SearchHit(project.name, model.name))
            if not model.latest_version:
                continue
            for v in client.versions(ref, limit=VERSIONS_PER_MODEL):
                metadata = json.dumps(v.metadata, sort_keys=True, default=str)
                if _matches(words, v.message, " ".join(v.aliases), v.author or "", metadata):
                    what = v.message or ", ".join(v.aliases) or (v.author or "")
                    hits.append(SearchHit(project.name, model.name, v.number, what))
                if len(hits) >= most:
                    return hits
    return hits


class SearchBox(QWidget):
    """The search field and its results; see the module docstring."""

    model_chosen = Signal(str, str)
    version_chosen = Signal(str, str, int)
    searched = Signal()  # the results for the text typed are shown

    def __init__(self, client: lmvp.Client, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._client = client
        self._task: Task | None = None
        self.edit = QLineEdit()
        self.edit.setPlaceholderText("Search projects, models and versions")
        self.edit.setAccessibleName("Search")
        self.edit.setClearButtonEnabled(True)
        self.results = QListWidget()
        self.results.setAccessibleName("Search results")
        self.results.setMaximumHeight(160)
        self.results.hide()
        self.status = QLabel()
        self.status.hide()
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.edit)
        layout.addWidget(self.status)
        layout.addWidget(self.results)
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(300)
        self._timer.timeout.connect(self.search)
        self.edit.textChanged.connect(lambda _text: self._timer.start())
        self.edit.returnPressed.connect(self.search)
        self.results.itemActivated.connect(self._chosen)
        self.results.itemClicked.connect(self._chosen)

    def hits(self) -> list[SearchHit]:
        """The results shown."""
        return [
            self.results.item(row).data(Qt.ItemDataRole.UserRole)
            for row in range(self.results.count())
        ]

    def search(self) -> None:
        """Search for the text typed now (off the UI thread)."""
        self._timer.stop()
        text = self.edit.text().strip()
        if self._task is not None:
            self._task.cancel()
            self._task = None
        if not text:
            self.results.clear()
            self.results.hide()
            self.status.hide()
            self.searched.emit()
            return
        self._task = run_async(
            search_server,
            self._client,
            text,
            on_done=lambda hits: self._show(text, hits),
            on_error=self._failed,
            owner=self,
        )

    def _show(self, text: str, hits: list[SearchHit]) -> None:
        self._task = None
        self.results.clear()
        for hit in hits:
            item = QListWidgetItem(hit.label)
            item.setData(Qt.ItemDataRole.UserRole, hit)
            self.results.addItem(item)
        self.results.setVisible(bool(hits))
        self.status.setText("" if hits else f"Nothing found for “{text}”")
        self.status.setVisible(not hits)
        self.searched.emit()

    def _failed(self, exc: BaseException) -> None:
        self._task = None
        self.status.setText(explain(exc, self._client.server).sentence)
        self.status.show()
        self.searched.emit()

    def _chosen(self, item: QListWidgetItem) -> None:
        hit = item.data(Qt.ItemDataRole.UserRole)
        if not isinstance(hit, SearchHit) or hit.model is None:
            return
        if hit.version is None:
            self.model_chosen.emit(hit.project, hit.model)
        else:
            self.version_chosen.emit(hit.project, hit.model, hit.version)


__all__ = ["SearchBox", "SearchHit", "search_server"]
