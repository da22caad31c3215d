"""The model's retention and storage, under its version table: `RetentionPane` says the
retention policy in force in words (the model's own, or the project's default it inherits),
what the policy's next application would remove and the bytes that frees, and what the
project's and the model's blobs take on the server. Its button opens `RetentionDialog`
(`retention_dialog`), which sets, changes or removes the model's own policy (maintainers and
owners; others see the policy here, read-only).

Everything shown comes from the server through `lmvp.Client`'s public calls, read off the UI
thread (`run_async`): the preview (`preview_retention`) says which rules keep each version and
which versions go, so that no policy logic lives here; `usage` gives the storage figures. The
pane emits `marks_changed` with the preview's marks for the version table's "Kept by" column,
and reads everything again when the model's versions, aliases or policy change
(`on_server_event`, coalesced: a burst of events makes one more read after the one on its way).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QHBoxLayout,
    QLabel,
    QListWidget,
    QPushButton,
    QSizePolicy,
    QVBoxLayout,
    QWidget,
)

import lmvp
from lmvp.history import human_size
from lmvp.types import RetentionPreview, Usage
from lmvp_desktop.errors import ErrorBox, explain
from lmvp_desktop.retention_dialog import RetentionDialog
from lmvp_desktop.tasks import run_async

log = logging.getLogger(__name__)

# Roles that may change a retention policy (the server says the same).
POLICY_ROLES = frozenset({"maintainer", "owner"})
# The would-remove list shows this many rows before it scrolls.
_LIST_ROWS = 5


@dataclass(frozen=True)
class RetentionState:
    """A model's retention as the server sees it now, and its project's storage (None when the
    server could not say: the rest is still shown)."""

    project: str
    model: str
    preview: RetentionPreview
    usage: Usage | None

    @property
    def kept(self) -> dict[int, tuple[str, ...]] | None:
        """Version number → the rules that keep it; None when no policy is in force."""
        if self.preview.policy is None:
            return None
        return {k.number: k.rules for k in self.preview.keep}


def fetch_retention_state(client: lmvp.Client, project: str, model: str) -> RetentionState:
    """The preview of the policy in force on `project/model` and the project's usage.
    Blocking: call it off the UI thread."""
    preview = client.preview_retention(f"{project}/{model}")
    try:
        usage: Usage | None = client.usage(project)
    except lmvp.LMVPError as exc:  # the policy is worth showing without the figures
        log.info("no storage usage for %s: %s", project, exc)
        usage = None
    return RetentionState(project, model, preview, usage)


def policy_sentence(preview: RetentionPreview) -> str:
    """The policy in force in words, saying whose it is."""
    if preview.policy is None:
        return "No retention policy: every version is kept."
    whose = "the project's default policy" if preview.source == "project" else "this model's policy"
    return f"Retention ({whose}): {preview.policy.describe()}; every other version goes."


def removal_sentence(preview: RetentionPreview) -> str:
    """What the next application of the policy would do."""
    if preview.policy is None:
        return ""
    if not preview.remove:
        return "Its next application removes nothing."
    count = len(preview.remove)
    versions = "1 version" if count == 1 else f"{count} versions"
    return (
        f"Its next application moves {versions} to the trash, freeing "
        f"{human_size(preview.bytes_freed)} ({preview.bytes_freed:,} bytes) once they leave it."
    )


def removal_item(removed: lmvp.types.RemovedVersion) -> str:
    """One row of the would-remove list."""
    step = f", step {removed.step}" if removed.step is not None else ""
    created = removed.created_at.astimezone().strftime("%Y-%m-%d %H:%M")
    return f"v{removed.number}: {human_size(removed.size)}{step}, created {created}"


def usage_sentence(usage: Usage | None, model: str) -> str:
    """The project's and the model's storage in words."""
    if usage is None:
        return "Storage: the server did not say."
    blobs = "1 blob" if usage.blobs == 1 else f"{usage.blobs:,} blobs"
    text = f"Storage: the project {usage.project} holds {human_size(usage.bytes)} in {blobs}"
    if usage.unreferenced_bytes:
        text += (
            f" ({human_size(usage.unreferenced_bytes)} of it referenced by no version: the "
            "garbage collector frees it)"
        )
    share = usage.model(model)
    if share is not None:
        text += (
            f"; {model}'s versions reference {human_size(share.referenced_bytes)}, and deleting "
            f"it would free {human_size(share.exclusive_bytes)} once it leaves the trash"
        )
    return text + "."


class RetentionPane(QWidget):
    """The retention policy, what its next application removes, and storage, of the model
    shown (`show_model`). See the module docstring.

    Signals: `loaded()` each time it shows the server's answer, `marks_changed(project, model,
    kept, removed)` with the preview's marks (`kept`: version → rules, None without a policy;
    `removed`: the numbers that go next), `policy_changed()` after this user changed it.
    """

    loaded = Signal()
    marks_changed = Signal(str, str, object, object)
    policy_changed = Signal()

    def __init__(self, client: lmvp.Client, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._client = client
        self._project: str | None = None
        self._model: str | None = None
        self._role: str | None = None
        self._state: RetentionState | None = None
        self._generation = 0
        self._loading = False
        self._again = False
        self._metric_keys: Callable[[], Sequence[str]] = tuple
        # The policy dialog open now (tests fill it in), None when none is.
        self.dialog: RetentionDialog | None = None

        # The three lines are read out by their text (a label's accessible name would hide it).
        self.policy_label = _label()
        self.edit_button = QPushButton("Retention policy…")
        self.edit_button.setAccessibleName("Change the retention policy")
        self.edit_button.clicked.connect(self.open_editor)
        self.removal_label = _label()
        self.removal_list = QListWidget()
        self.removal_list.setAccessibleName("Versions the next application removes")
        self.removal_list.hide()
        self.usage_label = _label()
        self.error_box = ErrorBox()

        top = QHBoxLayout()
        top.setContentsMargins(0, 0, 0, 0)
        top.addWidget(self.policy_label, 1)
        top.addWidget(self.edit_button, 0, Qt.AlignmentFlag.AlignTop)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(2)
        layout.addLayout(top)
        layout.addWidget(self.removal_label)
        layout.addWidget(self.removal_list)
        layout.addWidget(self.usage_label)
        layout.addWidget(self.error_box)
        # As tall as its lines: the version table above takes the room the window has.
        self.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Maximum)
        self.show_model(None, None)

    # --- public API ------------------------------------------------------------------------

    @property
    def state(self) -> RetentionState | None:
        """What is shown: the server's last answer for the model shown."""
        return self._state

    @property
    def loading(self) -> bool:
        return self._loading

    def set_metric_keys_provider(self, provider: Callable[[], Sequence[str]]) -> None:
        """Where the policy dialog reads the model's metric keys from (its hint)."""
        self._metric_keys = provider

    def show_model(self, project: str | None, model: str | None) -> None:
        """Show the retention and storage of `project/model` (nothing for None), read in the
        background."""
        self._generation += 1
        self._project, self._model = project, model
        self._state = None
        self._loading = False
        self._again = False
        self.policy_label.setText("" if model is None else "Reading the retention policy …")
        self.removal_label.clear()
        self.removal_list.clear()
        self.removal_list.hide()
        self.usage_label.clear()
        self.error_box.show_error(None)
        self.setVisible(model is not None)
        self._update_actions()
        if model is not None:
            self.refresh()

    def set_role(self, role: str | None) -> None:
        """The user's role in the project shown (None: not known yet): maintainers and owners
        may change the policy."""
        self._role = role
        self._update_actions()

    def refresh(self) -> None:
        """Read the preview and the usage again (in the background); asked while a read is on
        its way, one more read follows it."""
        if self._project is None or self._model is None:
            return
        if self._loading:
            self._again = True
            return
        self._loading = True
        generation, project, model = self._generation, self._project, self._model
        run_async(
            fetch_retention_state,
            self._client,
            project,
            model,
            on_done=lambda state: self._show(generation, state),
            on_error=lambda exc: self._failed(generation, exc),
            owner=self,
        )

    def on_server_event(self, event: lmvp.Event) -> None:
        """Read again when what the pane shows changed: a version, alias or policy of the
        model shown, or its project's default policy."""
        if event.project != self._project or self._model is None:
            return
        mine = event.model == self._model and event.kind.startswith(
            ("version.", "alias.", "retention.")
        )
        default = event.model is None and event.kind.startswith("retention.")
        if mine or default:
            self.refresh()

    def open_editor(self) -> RetentionDialog | None:
        """Open the policy dialog of the model shown (maintainers and owners); None if not
        allowed or no model is shown."""
        if self._project is None or self._model is None or self._role not in POLICY_ROLES:
            return None
        if self.dialog is not None:
            self.dialog.close()
        preview = self._state.preview if self._state is not None else None
        dialog = RetentionDialog(
            self._client,
            self._project,
            self._model,
            preview,
            self,
            metric_keys=list(self._metric_keys()),
        )
        dialog.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        dialog.changed.connect(self._policy_changed)
        dialog.destroyed.connect(lambda _o=None: self._forget_dialog(dialog))
        self.dialog = dialog
        dialog.open()  # not modal for the app: the UI keeps running
        return dialog

    # --- helpers ---------------------------------------------------------------------------

    def _forget_dialog(self, dialog: RetentionDialog) -> None:
        if self.dialog is dialog:
            self.dialog = None

    def _policy_changed(self, _retention: object) -> None:
        self.refresh()
        self.policy_changed.emit()

    def _update_actions(self) -> None:
        allowed = self._role in POLICY_ROLES
        self.edit_button.setEnabled(allowed and self._model is not None)
        self.edit_button.setToolTip(
            "Set, change or remove the model's retention policy"
            if allowed
            else "Maintainers and owners change the retention policy"
        )

    def _show(self, generation: int, state: RetentionState) -> None:
        if generation != self._generation:
            return
        self._loading = False
        self._state = state
        preview = state.preview
        self.error_box.show_error(None)
        self.policy_label.setText(policy_sentence(preview))
        self.removal_label.setText(removal_sentence(preview))
        self.removal_label.setVisible(preview.policy is not None)
        self.removal_list.clear()
        self.removal_list.addItems([removal_item(r) for r in preview.remove])
        rows = min(len(preview.remove), _LIST_ROWS)
        frame = 2 * self.removal_list.frameWidth()
        self.removal_list.setFixedHeight(max(rows, 1) * self.removal_list.sizeHintForRow(0) + frame)
        self.removal_list.setVisible(bool(preview.remove))
        self.usage_label.setText(usage_sentence(state.usage, state.model))
        self.marks_changed.emit(
            state.project, state.model, state.kept, [r.number for r in preview.remove]
        )
        self.loaded.emit()
        if self._again:
            self._again = False
            self.refresh()

    def _failed(self, generation: int, exc: BaseException) -> None:
        if generation != self._generation:
            return
        self._loading = False
        if self._state is None:
            self.policy_label.setText("")
        self.error_box.show_error(explain(exc, self._client.server))
        if self._again:
            self._again = False
            self.refresh()


def _label() -> QLabel:
    label = QLabel()
    label.setWordWrap(True)
    label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
    return label


__all__ = [
    "POLICY_ROLES",
    "RetentionPane",
    "RetentionState",
    "fetch_retention_state",
    "policy_sentence",
    "removal_sentence",
    "usage_sentence",
]
