"""The server's live event stream (new versions, moved aliases, finished runs ...) as a Qt
signal, for live views and teammates' notifications.

A Python thread follows `Client.events()` (Server-Sent Events, resumed after a dropped
connection from the last event id) and emits each `lmvp.Event` as `received`, which Qt delivers
on the UI thread. `stop()` ends the thread at once by closing its stream.
"""

from __future__ import annotations

import logging
import threading

from PySide6.QtCore import QObject, Signal

import lmvp
from lmvp import EventStream
from lmvp.errors import LMVPError

log = logging.getLogger(__name__)


class ServerEvents(QObject):
    """Follows the event stream of `server` with `token` on a thread of its own."""

    received = Signal(object)  # lmvp.Event
    lost = Signal(str)  # the stream could not be kept open (message)

    def __init__(self, server: str, token: str | None, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._client = lmvp.Client(server, token)
        self._stream: EventStream | None = None
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._follow, name="lmvp-events", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        if self._stream is not None:
            self._stream.close()  # wakes the thread blocked on the stream
        self._thread.join(5)
        self._client.close()

    def _follow(self) -> None:
        while not self._stopped.is_set():
            try:
                self._stream = self._client.events()
                for event in self._stream:
                    if self._stopped.is_set():
                        return
                    self.received.emit(event)
            except (LMVPError, RuntimeError, OSError) as exc:
                if self._stopped.is_set():
                    return
                log.info("event stream lost: %s", exc)
                self.lost.emit(str(exc))
                self._stopped.wait(5)


__all__ = ["ServerEvents"]
