"""`RetentionDialog`: set, try, change or remove a model's own retention policy (maintainers
and owners), as the model's retention pane (`retention_pane.RetentionPane`) opens it.

The form holds the rules of `lmvp.types.RetentionPolicy`; "Preview" asks the server what the
form's policy would remove now (its preview, which changes nothing), "Save policy" and "Remove
the model's policy" change it on the server. Every call runs off the UI thread (`run_async`); a
refusal is said as a sentence (`errors.explain`) and the dialog stays open.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
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
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

import lmvp
from lmvp.history import human_size
from lmvp.types import KeepBest, RetentionPolicy, RetentionPreview
from lmvp_desktop.errors import ErrorBox, explain
from lmvp_desktop.tasks import run_async


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
    """Best-by rules as `parse_keep_best` reads them."""
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


def _label() -> QLabel:
    label = QLabel()
    label.setWordWrap(True)
    label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
    return label


__all__ = ["RetentionDialog", "format_keep_best", "parse_keep_best"]
