"""Errors as the desktop app says them: a sentence for a person first, the technical detail
behind a "Details" expander.

`explain(error, server)` turns an exception (or the client's message) into a `PlainError`: a
short sentence ("The LMVP server at 127.0.0.1:8470 is not running."), the original message as
its detail, and whether the server could not be reached (the views then offer "Start it" for a
local server and "Change server…"). `ErrorBox` shows one: the sentence in red, a "Details"
toggle that shows the detail, and the actions the view gives it. The CLI's hints in the
client's messages (`lmvp login SERVER`, LMVP_SERVER) are for a terminal, so they stay in the
detail.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QHBoxLayout, QLabel, QPushButton, QVBoxLayout, QWidget

import lmvp
from lmvp.errors import (
    AuthenticationError,
    NotFound,
    PermissionDenied,
    ServerUnavailable,
)

_UNREACHABLE = re.compile(
    r"connection refused|errno 111|could not (be )?reach|not reachable|cannot reach|"
    r"name or service not known|timed out|connecterror|connection reset",
    re.IGNORECASE,
)
_LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


@dataclass(frozen=True)
class PlainError:
    """An error as a person reads it: `sentence`, and the technical `detail`."""

    sentence: str
    detail: str
    unreachable: bool = False

    def short(self) -> str:
        """The sentence alone (a status bar, a tooltip's first line)."""
        return self.sentence


def server_name(server: str | None) -> str:
    """`http://127.0.0.1:8470` as `127.0.0.1:8470`, how a person names a server."""
    if not server:
        return "the server"
    parts = urlsplit(server)
    return parts.netloc or server


def is_local(server: str | None) -> bool:
    """Whether `server` is on this machine (so "Start it" can make sense)."""
    return bool(server) and (urlsplit(server or "").hostname or "") in _LOCAL_HOSTS


def unreachable_sentence(server: str | None) -> str:
    where = server_name(server)
    if is_local(server):
        return f"The LMVP server at {where} is not running."
    return f"The LMVP server at {where} cannot be reached."


def explain(error: BaseException | str, server: str | None = None) -> PlainError:
    """The sentence and detail for `error` (an exception, or a message already made)."""
    detail = error.message if isinstance(error, lmvp.LMVPError) else str(error)
    if isinstance(error, ServerUnavailable) and not re.search(r"\bfailed: ", detail):
        return PlainError(unreachable_sentence(server), detail, unreachable=True)
    if not isinstance(error, lmvp.LMVPError) and _UNREACHABLE.search(detail):
        return PlainError(unreachable_sentence(server), detail, unreachable=True)
    if isinstance(error, ServerUnavailable):
        return PlainError(
            f"The LMVP server at {server_name(server)} had a problem; try again in a moment.",
            detail,
        )
    if isinstance(error, AuthenticationError):
        return PlainError(
            _first_sentence(detail) or "The server did not accept your login: log in again.",
            detail,
        )
    if isinstance(error, PermissionDenied):
        return PlainError("Your role in this project does not allow this.", detail)
    if isinstance(error, NotFound):
        return PlainError(_first_sentence(detail) or "It is not there (any more).", detail)
    return PlainError(_first_sentence(detail) or "Something went wrong.", detail)


def _first_sentence(message: str) -> str:
    """The message without its CLI hints: up to the first ' (' or '; ', capitalised, with a
    full stop."""
    text = message.strip()
    for cut in (" (", "; ", ": `", "\n"):
        index = text.find(cut)
        if index > 20:
            text = text[:index]
    text = text.rstrip(" .:;")
    if not text:
        return ""
    return text[0].upper() + text[1:] + "."


class ErrorBox(QWidget):
    """A sentence in red, a "Details" toggle with the technical detail, and actions (buttons
    a view adds with `add_action`, shown only with an error that wants them). Hidden while
    there is no error."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.error: PlainError | None = None
        self.sentence = QLabel()
        self.sentence.setWordWrap(True)
        self.sentence.setStyleSheet("color: #b00020;")
        self.sentence.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.details_button = QPushButton("Details")
        self.details_button.setCheckable(True)
        self.details_button.setAccessibleName("Details")
        self.details_button.toggled.connect(self._toggle_details)
        self.detail = QLabel()
        self.detail.setWordWrap(True)
        self.detail.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.detail.setStyleSheet("color: #555;")
        self.detail.hide()
        self._actions: list[tuple[QPushButton, Callable[[PlainError], bool]]] = []
        self.buttons = QHBoxLayout()
        self.buttons.setContentsMargins(0, 0, 0, 0)
        self.buttons.addWidget(self.details_button)
        self.buttons.addStretch(1)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.sentence)
        layout.addLayout(self.buttons)
        layout.addWidget(self.detail)
        self.hide()

    def add_action(
        self,
        text: str,
        triggered: Callable[[], None],
        when: Callable[[PlainError], bool] = lambda e: True,
    ) -> QPushButton:
        """A button shown beside "Details" with errors for which `when(error)` holds."""
        button = QPushButton(text)
        button.clicked.connect(lambda _checked=False: triggered())
        self.buttons.insertWidget(self.buttons.count() - 2, button)
        self._actions.append((button, when))
        button.hide()
        return button

    def show_error(self, error: PlainError | None) -> None:
        """Show `error`, or hide the box for None."""
        self.error = error
        if error is None:
            self.sentence.clear()
            self.detail.clear()
            self.hide()
            return
        self.sentence.setText(error.sentence)
        self.detail.setText(error.detail)
        self.details_button.setVisible(bool(error.detail) and error.detail != error.sentence)
        for button, when in self._actions:
            button.setVisible(when(error))
        self.show()

    def text(self) -> str:
        return self.sentence.text()

    def _toggle_details(self, shown: bool) -> None:
        self.detail.setVisible(shown)
        self.details_button.setText("Hide details" if shown else "Details")


__all__ = ["ErrorBox", "PlainError", "explain", "is_local", "server_name", "unreachable_sentence"]
