"""The server's live event stream (new versions, moved aliases, finished runs ...) as Qt
signals, for live views and teammates' notifications.

A Python thread follows `Client.events()` (Server-Sent Events) and emits each `lmvp.Event` as
`received`, which Qt delivers on the UI thread. `opened` is emitted each time the server has
accepted the stream: from then on every change comes as an event, so the views load (or
reconcile) their state on it and miss nothing that happened before, such as a project created
while the app was starting. A stream that is lost is opened again after the last event seen
(`Last-Event-ID`), so the events committed while it was down are replayed, not skipped.
`stop()` ends the thread at once by closing its stream.
"""

from __future__ import annotations

import logging
import threading

from PySide6.QtCore import QObject, Signal

import lmvp
from lmvp import EventStream
from lmvp.errors import LMVPError

log = logging.getLogger(__name__)

# Seconds between attempts to open the stream again once the client gave up on it.
RETRY_SECONDS = 5.0


class ServerEvents(QObject):
    """Follows the event stream of `server` with `token` on a thread of its own."""

    received = Signal(object)  # lmvp.Event
    opened = Signal()  # the server accepted the stream: every later change will come
    lost = Signal(str)  # the stream could not be kept open (message)

    def __init__(
        self,
        server: str,
        token: str | None,
        parent: QObject | None = None,
        *,
        retry_seconds: float = RETRY_SECONDS,
    ) -> None:
        super().__init__(parent)
        self._client = lmvp.Client(server, token)
        self._stream: EventStream | None = None
        self._stopped = threading.Event()
        self._retry_seconds = retry_seconds
        self.last_id: int | None = None  # the last event received (resumed after)
        self._thread = threading.Thread(target=self._follow, name="lmvp-events", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        if self._stream is not None:
            self._stream.close()  # wakes the thread blocked on the stream
        if self._thread.is_alive():
            self._thread.join(5)
        self._client.close()

    def _follow(self) -> None:
        while not self._stopped.is_set():
            try:
                self._stream = self._client.events(since=self.last_id, on_open=self.opened.emit)
                for event in self._stream:
                    if self._stopped.is_set():
                        return
                    self.last_id = event.id
                    self.received.emit(event)
            except (LMVPError, RuntimeError, OSError) as exc:
                if self._stopped.is_set():
                    return
                log.info("event stream lost: %s", exc)
                self.lost.emit(str(exc))
                self._stopped.wait(self._retry_seconds)


__all__ = ["ServerEvents"]
