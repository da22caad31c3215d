"""The daemon's exception hierarchy.

Every error the daemon raises on purpose is a `DaemonError`: it carries a short
`title` and a `message` that tells the user what happened and what to do next,
so that the CLI, the logs and the desktop app can show it as it is, without
parsing log wording. Modules define their specific errors as subclasses; an error
that several modules raise lives here.
"""

from __future__ import annotations


class DaemonError(Exception):
    """Base of the daemon's errors: a short title and a message a user can act on."""

    title: str = "Sync error"

    def __init__(self, message: str, *, title: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if title is not None:
            self.title = title

    def __str__(self) -> str:
        return self.message


class OutboxError(DaemonError):
    """A problem with the outbox or its lock, with a message a user can act on.

    Raised by the state directory's lock (`lmvp_daemon.state_dir`), the outbox database
    (`lmvp_daemon.outbox_db`), its watches (`lmvp_daemon.watches`) and its checkpoint queue
    (`lmvp_daemon.outbox`).
    """

    title: str = "Daemon state error"
