"""Whether the app's server answers, so that nothing says "Up to date" while it cannot be reached.

The daemon only finds the server gone when it has something to send; the window and the tray
must know sooner. `ServerReachability` asks the server who the user is (one try, off the UI
thread) at start, every `down_seconds` while it does not answer and every `up_seconds` while it
does; the event stream's `opened` and `lost` (`mark_reachable`, `check`) tell it at once.
`changed(PlainError | None)` carries the sentence to show while the server cannot be reached,
None once it answers; `state` is None before the first answer.
"""

from __future__ import annotations

import logging

from PySide6.QtCore import QObject, QTimer, Signal

import lmvp
from lmvp.errors import ServerUnavailable
from lmvp_desktop.errors import PlainError, explain
from lmvp_desktop.tasks import run_async

log = logging.getLogger(__name__)


class ServerReachability(QObject):
    """Follows whether `server` answers; see the module docstring."""

    changed = Signal(object)  # PlainError while unreachable, None when it answers

    def __init__(
        self,
        server: str,
        token: str | None,
        parent: QObject | None = None,
        *,
        down_seconds: float = 3.0,
        up_seconds: float = 30.0,
    ) -> None:
        super().__init__(parent)
        self.server = server
        self._client = lmvp.Client(server, token, retries=1)
        self.known = False  # an answer (or its absence) has been seen
        self.problem: PlainError | None = None
        self._asking = False
        self._down_ms = round(down_seconds * 1000)
        self._up_ms = round(up_seconds * 1000)
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.timeout.connect(self.check)

    @property
    def reachable(self) -> bool | None:
        """True or False once known, None before."""
        return None if not self.known else self.problem is None

    def start(self) -> None:
        self.check()

    def stop(self) -> None:
        self._timer.stop()
        self._client.close()

    def check(self) -> None:
        """Ask the server now (one try, off the UI thread)."""
        if self._asking:
            return
        self._asking = True
        run_async(self._client.whoami, on_done=self._answered, on_error=self._failed, owner=self)

    def mark_reachable(self) -> None:
        """The server answered something else (the event stream opened)."""
        self._set(None)

    def _answered(self, _user: object) -> None:
        self._asking = False
        self._set(None)

    def _failed(self, exc: BaseException) -> None:
        self._asking = False
        if isinstance(exc, ServerUnavailable) or not isinstance(exc, lmvp.LMVPError):
            self._set(explain(exc, self.server))
        else:  # it answered, if only to refuse (a revoked login is said where it matters)
            self._set(None)

    def _set(self, problem: PlainError | None) -> None:
        changed = not self.known or (problem is None) != (self.problem is None)
        self.known = True
        self.problem = problem
        self._timer.start(self._down_ms if problem is not None else self._up_ms)
        if changed:
            if problem is not None:
                log.info("%s (%s)", problem.sentence, problem.detail)
            self.changed.emit(problem)


__all__ = ["ServerReachability"]
