"""The model's retention and storage, under its version table: `RetentionPane` says the
retention policy in force in words (the model's own, or the project's default it inherits),
what the policy's next application would remove and the bytes that frees, and what the
project's and the model's blobs take on the server. `RetentionDialog` sets, changes or removes
the model's own policy (maintainers and owners; others see the policy, read-only).

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
from typing import Any

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QDialog,
    QDialogButtonBox,
    QDoubleSpinBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QPushButton,
    QSizePolicy,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

import lmvp
from lmvp.history import human_size
from lmvp.types import KeepBest, RetentionPolicy, RetentionPreview, Usage
from lmvp_desktop.errors import ErrorBox, explain
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
            f"it would free {human_size(share.exclusive_bytes)}"
        )
    return text + "."


def parse_keep_best(text: str) -> tuple[KeepBest, ...]:
    """`3:val_loss:min, 2:accuracy:max` (as `lmvp retention set --keep-best` takes it) as
    rules; raises ValueError with a sentence saying what is wrong."""
    rules = []
    for part in text.replace(";", ",").split(","):
        part = part.strip()
        if not part:
            continue
        count, _, rest = part.partition(":")
        metric, _, mode = rest.rpartition(":")
        if mode not in ("min", "max"):
            metric, mode = rest, "min"
        if not count.strip().isdigit() or int(count) < 1 or not metric.strip():
            raise ValueError(
                f"'{part}': write the best versions to keep as COUNT:METRIC:min or max, "
                "e.g. 3:val_loss:min"
            )
        rules.append(KeepBest(int(count), metric.strip(), mode))
    return tuple(rules)


def format_keep_best(rules: Sequence[KeepBest]) -> str:
    return ", ".join(f"{b.count}:{b.metric}:{b.mode}" for b in rules)


class RetentionDialog(QDialog):
    """Sets, changes or removes the model's own retention policy (maintainers and owners).

    It opens with the policy in force (the model's own, else the project's default as a start);
    "Preview" asks the server what the form's policy would remove now (`trial_label`), before
    anything changes; "Save policy" sets it on the model, "Remove the model's policy" deletes
    the model's own (the project's default, if any, then applies). Each runs in the background;
    a refusal is shown as a sentence and the dialog stays open; on success `changed` is emitted
    and the dialog closes.
    """

    changed = Signal(object)  # the lmvp.types.Retention the server answered

    def __init__(
        self,
        client: lmvp.Client,
        project: str,
        model: str,
        preview: RetentionPreview | None,
        parent: QWidget | None = None,
        *,
        metric_keys: Sequence[str] = (),
    ) -> None:
        super().__init__(parent)
        self.client = client
        self.ref = f"{project}/{model}"
        self.setWindowTitle(f"Retention policy of {self.ref}")
        self.setMinimumWidth(480)
        policy = preview.policy if preview is not None else None
        own = preview is not None and preview.source == "model"

        intro = QLabel(
            "Aliased versions are always kept. A version kept by any rule stays; every other "
            "version goes to the trash when the policy is applied (after each commit, and on "
            "the server's schedule). Leave a rule at 0 to turn it off."
        )
        intro.setWordWrap(True)
        if preview is not None and preview.source == "project":
            intro.setText(
                intro.text() + " The model follows its project's default now: saving gives "
                "it a policy of its own."
            )
        self.latest_spin = _spin("Keep the latest versions", policy.keep_latest if policy else None)
        self.best_edit = QLineEdit(format_keep_best(policy.keep_best) if policy else "")
        self.best_edit.setPlaceholderText("e.g. 3:val_loss:min, 2:accuracy:max")
        self.best_edit.setAccessibleName("Keep the best versions by metric")
        self.steps_spin = _spin("Keep one version every this many steps", None)
        self.steps_spin.setMaximum(2_000_000_000)
        self.steps_spin.setValue((policy.keep_every_steps or 0) if policy else 0)
        self.hours_spin = _hours("Keep one version every this many hours", policy, "every")
        self.within_spin = _hours("Keep every version younger than this many hours", policy, "in")

        form = QFormLayout()
        form.addRow("Keep the latest", self.latest_spin)
        form.addRow("Keep the best", self.best_edit)
        if metric_keys:
            hint = QLabel("Metrics of this model: " + ", ".join(metric_keys))
            hint.setWordWrap(True)
            form.addRow("", hint)
        form.addRow("One every … steps", self.steps_spin)
        form.addRow("One every … hours", self.hours_spin)
        form.addRow("Younger than … hours", self.within_spin)

        self.preview_button = QPushButton("Preview")
        self.preview_button.setAccessibleName("Preview what this policy would remove")
        self.preview_button.clicked.connect(self.try_policy)
        self.trial_label = _label()
        self.trial_label.setAccessibleName("What this policy would remove")
        trial = QHBoxLayout()
        trial.addWidget(self.preview_button, 0, Qt.AlignmentFlag.AlignTop)
        trial.addWidget(self.trial_label, 1)

        self.error_box = ErrorBox()
        self.buttons = QDialogButtonBox()
        self.save_button = self.buttons.addButton(
            "Save policy", QDialogButtonBox.ButtonRole.AcceptRole
        )
        self.save_button.setAccessibleName("Save the retention policy")
        self.remove_button = self.buttons.addButton(
            "Remove the model's policy", QDialogButtonBox.ButtonRole.DestructiveRole
        )
        self.remove_button.setAccessibleName("Remove the model's retention policy")
        self.remove_button.setEnabled(own)
        if not own:
            self.remove_button.setToolTip("The model has no policy of its own")
        cancel = self.buttons.addButton(QDialogButtonBox.StandardButton.Cancel)
        cancel.setAccessibleName("Cancel")
        self.save_button.clicked.connect(self.save)
        self.remove_button.clicked.connect(self.remove)
        self.buttons.rejected.connect(self.reject)

        layout = QVBoxLayout(self)
        layout.addWidget(intro)
        layout.addLayout(form)
        layout.addLayout(trial)
        layout.addWidget(self.error_box)
        layout.addWidget(self.buttons)

    def policy(self) -> RetentionPolicy:
        """The policy the form says; raises ValueError with a sentence when it cannot be one."""
        policy = RetentionPolicy(
            keep_latest=self.latest_spin.value() or None,
            keep_best=parse_keep_best(self.best_edit.text()),
            keep_every_steps=self.steps_spin.value() or None,
            keep_every_hours=self.hours_spin.value() or None,
            keep_within_hours=self.within_spin.value() or None,
        )
        if policy == RetentionPolicy():
            raise ValueError(
                "Give at least one rule; to keep every version, remove the model's policy."
            )
        return policy

    def save(self) -> None:
        """Set the form's policy on the model (in the background)."""
        try:
            policy = self.policy()
        except ValueError as exc:
            self.error_box.show_error(explain(str(exc)))
            return
        self._run(lambda: self.client.set_retention(self.ref, policy))

    def try_policy(self) -> None:
        """Ask the server what the form's policy would remove now (in the background); it
        changes nothing."""
        try:
            policy = self.policy()
        except ValueError as exc:
            self.error_box.show_error(explain(str(exc)))
            return
        self.error_box.show_error(None)
        self.trial_label.setText("Asking the server …")
        run_async(
            self.client.preview_retention,
            self.ref,
            policy,
            on_done=self._tried,
            on_error=self._try_failed,
            owner=self,
        )

    def _tried(self, preview: RetentionPreview) -> None:
        if not preview.remove:
            self.trial_label.setText("This policy would remove nothing now.")
            return
        count = len(preview.remove)
        numbers = ", ".join(f"v{r.number}" for r in preview.remove[:10])
        if count > 10:
            numbers += f" and {count - 10} more"
        versions = "1 version" if count == 1 else f"{count} versions"
        self.trial_label.setText(
            f"This policy would move {versions} to the trash now ({numbers}), freeing "
            f"{human_size(preview.bytes_freed)} ({preview.bytes_freed:,} bytes)."
        )

    def _try_failed(self, exc: BaseException) -> None:
        self.trial_label.clear()
        self.error_box.show_error(explain(exc, self.client.server))

    def remove(self) -> None:
        """Remove the model's own policy (in the background)."""
        self._run(lambda: self.client.delete_retention(self.ref))

    def _run(self, call: Callable[[], Any]) -> None:
        self.save_button.setEnabled(False)
        self.error_box.show_error(None)
        run_async(call, on_done=self._done, on_error=self._failed, owner=self)

    def _done(self, retention: Any) -> None:
        self.changed.emit(retention)
        self.accept()

    def _failed(self, exc: BaseException) -> None:
        self.save_button.setEnabled(True)
        self.error_box.show_error(explain(exc, self.client.server))


def _spin(name: str, value: int | None) -> QSpinBox:
    spin = QSpinBox()
    spin.setRange(0, 1_000_000)
    spin.setSpecialValueText("off")
    spin.setAccessibleName(name)
    spin.setValue(value or 0)
    return spin


def _hours(name: str, policy: RetentionPolicy | None, which: str) -> QDoubleSpinBox:
    spin = QDoubleSpinBox()
    spin.setDecimals(2)
    spin.setRange(0, 1e6 if which == "every" else 1e7)
    spin.setSpecialValueText("off")
    spin.setAccessibleName(name)
    if policy is not None:
        value = policy.keep_every_hours if which == "every" else policy.keep_within_hours
        spin.setValue(value or 0)
    return spin


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

        self.policy_label = _label()
        self.policy_label.setAccessibleName("Retention policy")
        self.edit_button = QPushButton("Retention policy…")
        self.edit_button.setAccessibleName("Change the retention policy")
        self.edit_button.clicked.connect(self.open_editor)
        self.removal_label = _label()
        self.removal_label.setAccessibleName("What the next application removes")
        self.removal_list = QListWidget()
        self.removal_list.setAccessibleName("Versions the next application removes")
        self.removal_list.hide()
        self.usage_label = _label()
        self.usage_label.setAccessibleName("Storage")
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
    "RetentionDialog",
    "RetentionPane",
    "RetentionState",
    "fetch_retention_state",
    "parse_keep_best",
    "policy_sentence",
    "removal_sentence",
    "usage_sentence",
]
